"""The flusher's books, kept in a diskcache ``Cache`` under ``state/``.

Only the process holding the flusher lock writes here; ``status`` and clients only read.
Values are JSON text, never pickles, so a tampered file cannot run code. Keys:

- ``cursors``: ``{segment name: bytes consumed}`` for every journal segment still on disk
- ``counters``: ``{name: count}``: delivered, quarantined, retried, duplicate_risk,
  ``dropped:<reason>``, torn_lines, ... (monotonic)
- ``pending``: ids of traces that still hold undelivered events
- ``trace:<trace id>``: such a trace's pending events; once its root span is exported, a
  small tombstone that expires after ``TRACE_TTL`` seconds (it keeps late events of the trace
  from producing a second root span, and carries the trace's fields onto late spans)
- ``markers``: flush markers read but not yet satisfied
- ``inflight``: events sent since the last commit: after a crash they are sent again, so they
  count as duplicate risk
- ``last_success_at``, ``last_error``, ``auth_error``: for ``status``

The cache uses ``eviction_policy='none'`` (a default Cache silently evicts), keeps every value
inside SQLite (``disk_min_file_size`` is huge: no side files), and each round of the flusher
commits in one transaction, so cursors, traces and counters move together or not at all.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import diskcache

from .queuedir import FILE_MODE, QueueDir

TRACE_TTL = 3600.0

_SETTINGS = {
    "eviction_policy": "none",
    "size_limit": 1 << 62,
    "cull_limit": 0,
    "statistics": 0,
    "tag_index": 0,
    "disk_min_file_size": 1 << 40,
    "sqlite_synchronous": 1,  # NORMAL with WAL: a process crash never loses a commit
}


def open_cache(qd: QueueDir) -> diskcache.Cache:
    """The state cache of ``qd``, with private permissions."""
    cache = diskcache.Cache(qd.state, timeout=30, **_SETTINGS)
    try:
        os.chmod(qd.state, 0o700)
        for name in os.listdir(qd.state):
            path = os.path.join(qd.state, name)
            if os.path.isfile(path):
                os.chmod(path, FILE_MODE)
    except OSError:
        pass
    return cache


def loads(raw: Any) -> Any:
    """Decode a stored value (JSON text); None for anything unreadable."""
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class FlusherState:
    """Typed access to the state cache."""

    def __init__(self, qd: QueueDir) -> None:
        self.qd = qd
        self.cache = open_cache(qd)

    def close(self) -> None:
        self.cache.close()

    def transact(self) -> Any:
        """A context manager: everything written inside commits atomically."""
        return self.cache.transact()

    def get(self, key: str, default: Any = None) -> Any:
        value = loads(self.cache.get(key))
        return default if value is None else value

    def set(self, key: str, value: Any, expire: Optional[float] = None) -> None:
        self.cache.set(key, dumps(value), expire=expire)

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    # -- typed views -----------------------------------------------------------------------

    def cursors(self) -> dict[str, int]:
        value = self.get("cursors", {})
        return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def counters(self) -> dict[str, int]:
        value = self.get("counters", {})
        return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add to counters (call inside ``transact()`` together with what they count)."""
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        counters = self.counters()
        for name, amount in deltas.items():
            counters[name] = counters.get(name, 0) + amount
        self.set("counters", counters)

    def get_trace(self, trace_id: str) -> Optional[dict[str, Any]]:
        value = self.get("trace:" + trace_id)
        return value if isinstance(value, dict) else None

    def put_trace(self, trace_id: str, record: dict[str, Any], expire: Optional[float]) -> None:
        self.set("trace:" + trace_id, record, expire=expire)

    def delete_trace(self, trace_id: str) -> None:
        self.cache.delete("trace:" + trace_id)

    def record_success(self) -> None:
        self.set("last_success_at", time.time())

    def record_error(self, message: str, status: Optional[int] = None) -> None:
        self.set("last_error", {"at": time.time(), "message": message[:500], "status": status})

    def expire(self) -> None:
        """Drop expired tombstones."""
        self.cache.expire()
