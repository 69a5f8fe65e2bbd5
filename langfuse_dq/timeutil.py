"""Timestamps in the two forms Langfuse takes: ISO-8601 with ``Z`` and Unix nanoseconds.

The enqueue path formats a timestamp for every event, so ``iso_from_ns`` caches the part of
the string that changes once a second.
"""

from __future__ import annotations

import calendar
import math
import time
from datetime import date, datetime, timezone
from typing import Union

_NS = 1_000_000_000
_second_cache: tuple[int, str] = (-1, "")

TimeLike = Union[datetime, date, str, int, float]


def now_ns() -> int:
    """Wall-clock time in nanoseconds since the epoch."""
    return time.time_ns()


def iso_from_ns(ns: int) -> str:
    """``2026-11-26T21:33:54.838269Z`` for a Unix time in nanoseconds (microsecond precision)."""
    global _second_cache
    sec, rem = divmod(ns, _NS)
    cached_sec, prefix = _second_cache
    if cached_sec != sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second_cache = (sec, prefix)
    return f"{prefix}.{rem // 1000:06d}Z"


_prefix_cache: dict[str, int] = {}


def ns_from_iso(value: str) -> int:
    """Parse an ISO-8601 timestamp (``Z`` or an offset; naive means UTC) into Unix nanoseconds.

    Our own form (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) takes a fast path with a cache of the
    seconds part: the flusher parses two of these per observation.
    """
    if len(value) == 27 and value[26] == "Z" and value[19] == ".":
        seconds = _prefix_cache.get(value[:19])
        if seconds is None:
            seconds = calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))
            if len(_prefix_cache) > 4096:
                _prefix_cache.clear()
            _prefix_cache[value[:19]] = seconds
        micros = value[20:26]
        if micros.isdigit():
            return seconds * _NS + int(micros) * 1000
    return _parse_iso(value)


def _parse_iso(value: str) -> int:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    frac_ns = 0
    # datetime keeps microseconds only; keep nanoseconds that a caller may have supplied.
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        digits = text[dot + 1 : end]
        if digits:
            frac_ns = int((digits + "000000000")[:9])
        text = text[:dot] + text[end:]
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    whole = int(parsed.timestamp())
    return whole * _NS + frac_ns


def ns_from_time(value: TimeLike, field: str) -> int:
    """Convert a user-supplied time (aware or naive datetime, date, ISO string, epoch seconds).

    A naive datetime is local time, as everywhere else in Python. Raises ``TypeError`` or
    ``ValueError`` naming ``field`` for anything else.
    """
    if isinstance(value, bool):
        raise TypeError(
            f"{field} must be a datetime, an ISO-8601 string or epoch seconds, got bool"
        )
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.astimezone()
        micros = aware.microsecond
        return int(aware.replace(microsecond=0).timestamp()) * _NS + micros * 1000
    if isinstance(value, date):
        return (
            int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()) * _NS
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number of epoch seconds")
        return int(value * _NS)
    if isinstance(value, str):
        try:
            return ns_from_iso(value)
        except ValueError:
            raise ValueError(f"{field} is not an ISO-8601 timestamp: {value[:40]!r}") from None
    raise TypeError(
        f"{field} must be a datetime, an ISO-8601 string or epoch seconds, "
        f"got {type(value).__name__}"
    )


def iso_from_time(value: TimeLike, field: str) -> str:
    """ISO-8601 (``Z``) form of a user-supplied time; see :func:`ns_from_time`."""
    return iso_from_ns(ns_from_time(value, field))
