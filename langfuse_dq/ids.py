"""Trace and observation ids in OTel form, and the mapping of user-supplied ids.

Langfuse stores ids verbatim: a trace id is 32 lowercase hex characters, an observation id 16.
Anything else a user passes is mapped deterministically, the way the official SDK maps seeds
(``sha256(id)`` truncated), so that every process, and the official SDK, agree on the result.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import uuid
from typing import Any

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_OBSERVATION_ID = re.compile(r"^[0-9a-f]{16}$")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_ZERO_TRACE = "0" * 32
_ZERO_OBSERVATION = "0" * 16


# Random ids as the OpenTelemetry SDK makes them (random.getrandbits): CPython reseeds the
# generator in a forked child, so parent and child never repeat each other's ids.
_rng = random.Random(os.urandom(32))


def _reseed() -> None:
    _rng.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex characters."""
    return f"{_rng.getrandbits(128) or 1:032x}"


def new_observation_id() -> str:
    """A random observation (span) id: 16 lowercase hex characters."""
    return f"{_rng.getrandbits(64) or 1:016x}"


class EnvelopeIds:
    """Unique ids for queued events: a random per-process prefix and a counter.

    Cheaper than a UUID per event and just as unique: the prefix changes after ``fork()``.
    """

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.prefix = os.urandom(10).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):012x}"


new_envelope_id = EnvelopeIds().next


def _seed_text(value: Any, field: str) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{field} must be a str, int or UUID, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError(f"{field} must not be empty")
    return text


def trace_id_from(value: Any, field: str = "trace_id") -> str:
    """Map a user-supplied trace id to wire form.

    32 lowercase hex is kept; a UUID (any case, with or without dashes) becomes ``uuid.hex``;
    anything else becomes ``sha256(text).digest()[:16].hex()``.
    """
    if isinstance(value, uuid.UUID):
        return value.hex if value.int else hashlib.sha256(str(value).encode()).digest()[:16].hex()
    text = _seed_text(value, field)
    if _TRACE_ID.match(text) and text != _ZERO_TRACE:
        return text
    if _UUID.match(text):
        mapped = uuid.UUID(text).hex
        if mapped != _ZERO_TRACE:
            return mapped
    return hashlib.sha256(text.encode("utf-8")).digest()[:16].hex()


def observation_id_from(value: Any, field: str = "id") -> str:
    """Map a user-supplied observation id: 16 lowercase hex is kept, else ``sha256(text)[:8]``."""
    text = _seed_text(value, field)
    if _OBSERVATION_ID.match(text) and text != _ZERO_OBSERVATION:
        return text
    return hashlib.sha256(text.encode("utf-8")).digest()[:8].hex()


def root_observation_id(trace_id: str) -> str:
    """The id of the span that stands for the trace itself in OTLP (its root observation).

    Deterministic, so every process that touches a trace agrees on it without coordination.
    """
    return hashlib.sha256(b"langfuse-dq:root:" + trace_id.encode("ascii")).digest()[:8].hex()


def is_trace_id(value: str) -> bool:
    """True for a wire-form trace id."""
    return bool(_TRACE_ID.match(value))


def is_observation_id(value: str) -> bool:
    """True for a wire-form observation id."""
    return bool(_OBSERVATION_ID.match(value))
