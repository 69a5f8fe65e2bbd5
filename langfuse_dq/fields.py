"""Keyword arguments of the client API and the Langfuse body fields they become.

Each public call accepts a fixed set of snake_case keywords; this module validates them and
maps them to Langfuse's camelCase body fields (``user_id`` -> ``userId``). An unknown keyword
is a ``TypeError``; a wrong type or value raises ``TypeError``/``ValueError`` naming the field.
``input``, ``output`` and ``metadata`` take any value and go through the mask untouched here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from .timeutil import iso_from_time

LEVELS = ("DEBUG", "DEFAULT", "WARNING", "ERROR")
SCORE_DATA_TYPES = ("NUMERIC", "CATEGORICAL", "BOOLEAN")
#: Fields that take any Python value (masked and converted, never rejected).
FREE_FIELDS = ("input", "output", "metadata")


@dataclass(frozen=True)
class Usage:
    """Token counts and costs of a generation.

    ``Usage(input=10, output=20, total=30)`` becomes ``usageDetails``; the ``*_cost`` fields
    become ``costDetails`` (in USD). ``details`` adds further token kinds such as
    ``{"input_cached_tokens": 5}``.
    """

    input: Optional[int] = None
    output: Optional[int] = None
    total: Optional[int] = None
    input_cost: Optional[float] = None
    output_cost: Optional[float] = None
    total_cost: Optional[float] = None
    details: Optional[Mapping[str, int]] = None

    def usage_details(self) -> dict[str, int]:
        """The ``usageDetails`` object (validated)."""
        raw: dict[str, Any] = dict(self.details or {})
        for key in ("input", "output", "total"):
            value = getattr(self, key)
            if value is not None:
                raw[key] = value
        return _usage_details(raw, "usage")

    def cost_details(self) -> dict[str, float]:
        """The ``costDetails`` object (validated)."""
        raw = {
            key: getattr(self, f"{key}_cost")
            for key in ("input", "output", "total")
            if getattr(self, f"{key}_cost") is not None
        }
        return _cost_details(raw, "usage")


# --- converters: (value, field name) -> wire value ------------------------------------------


def _str(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{field} must be a str, got {type(value).__name__}")


def _id_str(value: Any, field: str) -> str:
    """A string, or an int (ids from databases), made a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{field} must be a str, got {type(value).__name__}")


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"{field} must be a bool, got {type(value).__name__}")


def _tags(value: Any, field: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f"{field} must be a list of str, got {type(value).__name__}")
    tags = list(value)
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"{field} must be a list of str, found {type(tag).__name__}")
    return tags


def _level(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be one of {', '.join(LEVELS)}, got {type(value).__name__}")
    upper = value.upper()
    if upper not in LEVELS:
        raise ValueError(f"{field} must be one of {', '.join(LEVELS)}, got {value!r}")
    return upper


def _time(value: Any, field: str) -> str:
    return iso_from_time(value, field)


def _free(value: Any, field: str) -> Any:
    return value


def _model_parameters(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a dict, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{field} keys must be str, got {type(key).__name__}")
        out[key] = item
    return out


def _whole(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if type(value).__module__ == "numpy" and hasattr(value, "item"):
            return _whole(value.item(), field)
        raise TypeError(f"{field} must be an int, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{field} must be a whole number of tokens, got {value!r}")
        value = int(value)
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value!r}")
    return int(value)


def _nonnegative(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if type(value).__module__ == "numpy" and hasattr(value, "item"):
            return _nonnegative(value.item(), field)
        if type(value).__name__ == "Decimal":
            return _nonnegative(float(value), field)
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")
    return value


def _usage_details(value: Any, field: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a dict of token counts, got {type(value).__name__}")
    out: dict[str, int] = {}
    for key, count in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{field} keys must be str, got {type(key).__name__}")
        if count is None:
            continue
        out[key] = _whole(count, f"{field}.{key}")
    return out


def _cost_details(value: Any, field: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a dict of costs, got {type(value).__name__}")
    out: dict[str, float] = {}
    for key, cost in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{field} keys must be str, got {type(key).__name__}")
        if cost is None:
            continue
        out[key] = _nonnegative(cost, f"{field}.{key}")
    return out


def _prompt_version(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {type(value).__name__}")
    return value


_OPENAI_USAGE = {
    "prompt_tokens": "input",
    "completion_tokens": "output",
    "total_tokens": "total",
    "promptTokens": "input",
    "completionTokens": "output",
    "totalTokens": "total",
    "input_tokens": "input",
    "output_tokens": "output",
}
_LEGACY_COST = {"inputCost": "input", "outputCost": "output", "totalCost": "total"}


def usage_fields(value: Any, field: str = "usage") -> dict[str, Any]:
    """Body fields for ``usage=``: a :class:`Usage`, or a dict in Langfuse or OpenAI form."""
    if value is None:
        return {}
    if isinstance(value, Usage):
        out: dict[str, Any] = {}
        details = value.usage_details()
        prices = value.cost_details()
        if details:
            out["usageDetails"] = details
        if prices:
            out["costDetails"] = prices
        return out
    if not isinstance(value, Mapping):
        # Objects such as openai's CompletionUsage: read their token attributes.
        attrs = (
            {k: getattr(value, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            if hasattr(value, "prompt_tokens")
            else None
        )
        if attrs is None:
            raise TypeError(f"{field} must be a Usage or a dict, got {type(value).__name__}")
        value = attrs
    tokens: dict[str, Any] = {}
    costs: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{field} keys must be str, got {type(key).__name__}")
        if item is None or key == "unit":
            continue
        if key in _LEGACY_COST:
            costs[_LEGACY_COST[key]] = item
        elif key in ("input_cost", "output_cost", "total_cost"):
            costs[key[: -len("_cost")]] = item
        else:
            tokens[_OPENAI_USAGE.get(key, key)] = item
    result: dict[str, Any] = {}
    if tokens:
        result["usageDetails"] = _usage_details(tokens, field)
    if costs:
        result["costDetails"] = _cost_details(costs, field)
    return result


Converter = Callable[[Any, str], Any]

#: keyword -> (body field, converter), per kind of call.
TRACE_FIELDS: dict[str, tuple[str, Converter]] = {
    "name": ("name", _str),
    "user_id": ("userId", _id_str),
    "session_id": ("sessionId", _id_str),
    "metadata": ("metadata", _free),
    "tags": ("tags", _tags),
    "input": ("input", _free),
    "output": ("output", _free),
    "release": ("release", _id_str),
    "version": ("version", _id_str),
    "public": ("public", _bool),
    "timestamp": ("timestamp", _time),
    "environment": ("environment", _str),
}

_OBSERVATION_COMMON: dict[str, tuple[str, Converter]] = {
    "name": ("name", _str),
    "start_time": ("startTime", _time),
    "metadata": ("metadata", _free),
    "input": ("input", _free),
    "output": ("output", _free),
    "level": ("level", _level),
    "status_message": ("statusMessage", _str),
    "version": ("version", _id_str),
    "environment": ("environment", _str),
}

SPAN_FIELDS: dict[str, tuple[str, Converter]] = {
    **_OBSERVATION_COMMON,
    "end_time": ("endTime", _time),
}

GENERATION_FIELDS: dict[str, tuple[str, Converter]] = {
    **SPAN_FIELDS,
    "model": ("model", _str),
    "model_parameters": ("modelParameters", _model_parameters),
    "usage_details": ("usageDetails", _usage_details),
    "cost_details": ("costDetails", _cost_details),
    "completion_start_time": ("completionStartTime", _time),
    "prompt_name": ("promptName", _str),
    "prompt_version": ("promptVersion", _prompt_version),
}

EVENT_FIELDS: dict[str, tuple[str, Converter]] = dict(_OBSERVATION_COMMON)

ScoreValue = Union[float, int, str, bool]


def score_value(value: Any, data_type: Optional[str]) -> tuple[ScoreValue, Optional[str]]:
    """Validate a score's value against its data type; infer the type when not given."""
    if data_type is not None:
        if not isinstance(data_type, str) or data_type.upper() not in SCORE_DATA_TYPES:
            raise ValueError(
                f"data_type must be one of {', '.join(SCORE_DATA_TYPES)}, got {data_type!r}"
            )
        data_type = data_type.upper()
    if isinstance(value, bool):
        if data_type not in (None, "BOOLEAN"):
            raise TypeError(f"value must be a number for data_type {data_type}, got bool")
        return (1 if value else 0), "BOOLEAN"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        if data_type == "CATEGORICAL":
            raise TypeError("value must be a str for data_type CATEGORICAL")
        if data_type == "BOOLEAN" and value not in (0, 1):
            raise ValueError(f"value must be 0 or 1 for data_type BOOLEAN, got {value!r}")
        return value, data_type
    if isinstance(value, str):
        if data_type in ("NUMERIC", "BOOLEAN"):
            raise TypeError(f"value must be a number for data_type {data_type}, got str")
        return value, "CATEGORICAL"
    if value is None:
        raise ValueError("value is required for a score")
    raise TypeError(f"value must be a number, bool or str, got {type(value).__name__}")


def convert(
    kwargs: Mapping[str, Any], spec: Mapping[str, tuple[str, Converter]], call: str
) -> dict[str, Any]:
    """Validate ``kwargs`` against ``spec`` and return the body fields (``None`` values skipped)."""
    body: dict[str, Any] = {}
    for key, value in kwargs.items():
        entry = spec.get(key)
        if entry is None:
            allowed = ", ".join(sorted(spec))
            raise TypeError(
                f"{call}() got an unexpected keyword argument {key!r} (accepted: {allowed})"
            )
        if value is None:
            continue
        wire, converter = entry
        body[wire] = converter(value, key)
    return body
