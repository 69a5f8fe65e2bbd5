"""JSON that never fails, and deterministic truncation of oversize events.

``input``, ``output`` and ``metadata`` accept any Python value. The hot path encodes an event
once with the C encoder and a ``default`` hook; only when that raises (a cycle, NaN, a
non-string dict key, absurd nesting) does it fall back to :func:`to_jsonable`, which walks the
value and converts what JSON cannot hold. Nothing here raises for a user value.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Callable

from .timeutil import iso_from_ns, ns_from_time

MAX_DEPTH = 64
_CYCLE = "<cycle>"
_TOO_DEEP = "<max depth exceeded>"


def _datetime_iso(value: _dt.datetime) -> str:
    return iso_from_ns(ns_from_time(value, "value"))


def _convert(value: Any) -> Any:
    """One step of conversion for a value the JSON encoder cannot take as it is.

    Returns something JSON can encode (possibly a container that still needs converting).
    Never raises: an object that resists every rule becomes its ``repr``.
    """
    try:
        if isinstance(value, _dt.datetime):
            return _datetime_iso(value)
        if isinstance(value, (_dt.date, _dt.time)):
            return value.isoformat()
        if isinstance(value, _dt.timedelta):
            return value.total_seconds()
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, decimal.Decimal):
            if value.is_finite():
                return int(value) if value == value.to_integral_value() else float(value)
            return str(value)
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return "base64:" + base64.b64encode(raw).decode("ascii")
        if isinstance(value, (set, frozenset)):
            items = list(value)
            try:
                return sorted(items)
            except TypeError:
                return items
        if isinstance(value, PurePath):
            return str(value)
        if isinstance(value, BaseException):
            text = str(value)
            return f"{type(value).__name__}: {text}" if text else type(value).__name__
        if isinstance(value, complex):
            return str(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        model_dump = getattr(value, "model_dump", None)  # pydantic v2
        if callable(model_dump) and not isinstance(value, type):
            return model_dump()
        as_dict = getattr(value, "dict", None)  # pydantic v1
        if callable(as_dict) and hasattr(value, "__fields__") and not isinstance(value, type):
            return as_dict()
        if type(value).__module__ == "numpy":
            if getattr(value, "ndim", 0) and callable(getattr(value, "tolist", None)):
                return value.tolist()  # arrays
            if callable(getattr(value, "item", None)):
                return value.item()  # scalars
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, (tuple, list)):
            return list(value)
        if hasattr(value, "__dict__") and not isinstance(value, type):
            public = {k: v for k, v in vars(value).items() if not k.startswith("_")}
            return {"__type__": type(value).__name__, **public}
        if hasattr(value, "__slots__"):
            return {
                "__type__": type(value).__name__,
                **{s: getattr(value, s) for s in value.__slots__ if hasattr(value, s)},
            }
        return repr(value)
    except Exception:  # noqa: BLE001 (a hostile __repr__/property must not reach the app)
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:1000]
    except Exception:  # noqa: BLE001 (repr itself may raise)
        return f"<unserializable {type(value).__name__}>"


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` made only of dict/list/str/int/float/bool/None, JSON-safe.

    Cycles become ``"<cycle>"``, NaN and infinities become strings, non-string keys are
    stringified, nesting deeper than ``MAX_DEPTH`` is cut with a marker. Never raises.
    """
    return _walk(value, set(), 0)


def _walk(value: Any, active: set[int], depth: int) -> Any:
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, int):
        return value if type(value) is int else int.__index__(value)
    if isinstance(value, float):
        return _float(float(value))
    if depth >= MAX_DEPTH:
        return _TOO_DEEP
    if isinstance(value, (dict, list, tuple)):
        marker = id(value)
        if marker in active:
            return _CYCLE
        active.add(marker)
        try:
            if isinstance(value, dict):
                out: dict[str, Any] = {}
                for key, item in list(value.items()):
                    out[_key(key)] = _walk(item, active, depth + 1)
                return out
            return [_walk(item, active, depth + 1) for item in list(value)]
        finally:
            active.discard(marker)
    converted = _convert(value)
    if converted is value or type(converted) is type(value):
        return _safe_repr(value)
    marker = id(value)
    if marker in active:
        return _CYCLE
    active.add(marker)
    try:
        # A conversion to a container stays at this depth (the depth is the JSON nesting, as
        # the encoder of ``dumps`` sees it); a chain of conversions to other objects counts,
        # so that a hostile chain of fresh objects still ends.
        nested = depth if isinstance(converted, (dict, list, tuple)) else depth + 1
        return _walk(converted, active, nested)
    finally:
        active.discard(marker)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return str(_float(key))
    if isinstance(key, (int, bool)) or key is None:
        return json.dumps(key)
    converted = _convert(key)
    return converted if isinstance(converted, str) else _safe_repr(key)


_ENCODER = json.JSONEncoder(
    separators=(",", ":"), default=_convert, allow_nan=False, ensure_ascii=True
)


def dumps(value: Any) -> str:
    """Compact JSON text of any value; never raises."""
    try:
        return _ENCODER.encode(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        return _ENCODER.encode(to_jsonable(value))


def dumps_fields(envelope: dict[str, Any], body: dict[str, Any], risky: tuple[str, ...]) -> str:
    """Encode ``envelope`` (which holds ``body``); on failure sanitize only the ``risky`` fields.

    This is the enqueue fast path: one C-encoder pass in the common case.
    """
    try:
        return _ENCODER.encode(envelope)
    except (ValueError, TypeError, RecursionError, OverflowError):
        for name in risky:
            if name in body:
                body[name] = to_jsonable(body[name])
        return dumps(envelope)


def apply_mask(mask: Callable[[Any], Any] | None, value: Any) -> Any:
    """Run the user's mask on one field; a failing mask redacts the field rather than leak it."""
    if mask is None:
        return value
    try:
        return mask(value)
    except Exception as exc:  # noqa: BLE001 (a failing mask must neither raise nor leak)
        return f"<masking failed: {type(exc).__name__}; value withheld>"


# --- truncation -----------------------------------------------------------------------------

TRUNCATABLE = ("input", "output", "metadata")


def truncate_body(body: dict[str, Any], encoded_len: Callable[[], int], limit: int) -> list[str]:
    """Shrink ``body`` in place until ``encoded_len()`` fits ``limit`` bytes.

    Deterministic: the largest of input/output/metadata is replaced first by a marker string
    that says how big it was and keeps its beginning. Returns the fields that were cut.
    """
    cut: list[str] = []
    for _ in range(len(TRUNCATABLE) * 2):
        size = encoded_len()
        if size <= limit:
            break
        sizes = {name: len(dumps(body[name])) for name in TRUNCATABLE if body.get(name) is not None}
        if not sizes:
            break
        name = max(sorted(sizes), key=lambda n: sizes[n])
        excess = size - limit
        keep = max(0, sizes[name] - excess - 512)
        text = dumps(body[name])
        body[name] = (
            f"[truncated by langfuse-dq: {name} was {sizes[name]} bytes of JSON, "
            f"first {keep} kept] {text[:keep]}"
        )
        if name not in cut:
            cut.append(name)
    return cut
