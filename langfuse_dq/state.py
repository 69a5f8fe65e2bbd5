"""The flusher's books, kept in a diskcache ``Cache`` under ``state/``.

Only the process holding the flusher lock writes here; ``status`` and clients only read.
Values are JSON text, never pickles, so a tampered file cannot run code. Keys:

- ``cursors``: ``{segment name: bytes read}`` for every journal segment still on disk
- ``pins``: ``{segment name: [offsets]}``: lines before the cursor whose events are still
  pending (an open span, a root waiting for its trace to go quiet, a retry in progress)
- ``counters``: ``{name: count}``: delivered, quarantined, retried, duplicate_risk,
  ``dropped:<reason>``, torn_lines, ... (monotonic)
- ``markers``: flush markers read but not yet satisfied
- ``inflight``: events sent since the last commit: after a crash they are sent again, so they
  count as duplicate risk
- ``last_success_at``, ``last_error``, ``auth_error``: for ``status``

Tombstones of traces whose root span was delivered (or quarantined) live beside the cache in
``state/tombstones.sqlite`` (one row per trace, written many at a time): they keep late
events of a trace from producing a second root span and carry the trace's fields onto late
spans; they expire after ``TRACE_TTL`` seconds. They are written before the round's commit,
so a crash in between only ever finds a tombstone for a root that was indeed delivered.

The cache uses ``eviction_policy='none'`` (a default Cache silently evicts), keeps every value
inside SQLite (``disk_min_file_size`` is huge: no side files), and each round of the flusher
commits in one transaction, so cursors, traces and counters move together or not at all.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Collection, Iterator
from typing import Any, Optional, Union

import diskcache

from .fastjson import fast_encode
from .queuedir import DIR_MODE, FILE_MODE, QueueDir, move_aside

log = logging.getLogger("langfuse_dq.state")

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


PinMap = dict[str, set[int]]


def encode_pins(pins: dict[str, Union[bytes, Collection[int]]]) -> bytes:
    """Pinned offsets as a compact blob: a JSON header of (segment, count), then int64s.

    A backlog can pin tens of thousands of lines; JSON lists of them, rewritten at every
    commit, cost more than everything else the commit does. Offsets come as ints or, from the
    flusher, already packed as native int64s (``bytes``), which go in as they are.
    """
    header: list[tuple[str, int]] = []
    parts: list[bytes] = []
    for name, offsets in pins.items():
        if isinstance(offsets, bytes):
            packed = offsets
        else:
            packed = struct.pack(f"={len(offsets)}q", *offsets)
        header.append((name, len(packed) // 8))
        parts.append(packed)
    return json.dumps(header).encode() + b"\n" + b"".join(parts)


def decode_pins(blob: Any) -> PinMap:
    if not isinstance(blob, (bytes, bytearray)) or b"\n" not in blob:
        return {}
    head, _, raw = bytes(blob).partition(b"\n")
    try:
        header = json.loads(head)
        values = array.array("q")
        values.frombytes(raw)
    except ValueError:
        return {}
    out: dict[str, set[int]] = {}
    position = 0
    for name, count in header:
        out[str(name)] = set(values[position : position + int(count)])
        position += int(count)
    return out


_ENCODE = fast_encode(json.JSONEncoder(separators=(",", ":")))


def dumps(value: Any) -> str:
    """Compact JSON text (the same as ``json.dumps(value, separators=(",", ":"))``)."""
    return _ENCODE(value)


def open_state(qd: QueueDir) -> FlusherState:
    """The flusher's state, checked (``PRAGMA quick_check`` of both databases): a damaged one
    (garbage, truncated, malformed) is moved aside into ``corrupt-<timestamp>/`` and a fresh
    one started, counted as ``corrupt_state``. Call only while holding the flusher lock.

    Starting fresh forgets the cursors, so the journal segments still on disk are read again
    from their start: nothing pending is lost, and events from those segments that were
    already delivered are sent again (at-least-once; the log says so).
    """
    try:
        state = FlusherState(qd)
    except sqlite3.DatabaseError as exc:
        return _start_fresh(qd, exc)
    try:
        state.check()
    except sqlite3.DatabaseError as exc:
        state.close()
        return _start_fresh(qd, exc)
    return state


def _start_fresh(qd: QueueDir, exc: sqlite3.DatabaseError) -> FlusherState:
    moved = move_aside(qd, qd.state)
    log.error(
        "the flusher's state database is damaged (%s); moved it aside to %s and started a fresh"
        " one: journal segments still on disk are read again, so some events may be sent twice",
        exc,
        moved,
    )
    os.makedirs(qd.state, DIR_MODE, exist_ok=True)
    state = FlusherState(qd)
    with state.transact():
        state.add_counters({"corrupt_state": 1})
    return state


class FlusherState:
    """Typed access to the state cache."""

    def __init__(self, qd: QueueDir) -> None:
        self.qd = qd
        self.cache = open_cache(qd)
        self.tombstones = Tombstones(os.path.join(qd.state, "tombstones.sqlite"))
        #: the counters as last written (only the lock holder writes them); None: read them
        self._counters: Optional[dict[str, int]] = None

    def close(self) -> None:
        self.cache.close()
        self.tombstones.close()

    def check(self) -> None:
        """Raise ``sqlite3.DatabaseError`` if either database is damaged."""
        self.tombstones.check()
        with contextlib.closing(
            sqlite3.connect(os.path.join(self.qd.state, diskcache.core.DBNAME))
        ) as con:
            _quick_check(con)
        self.counters()
        self.pins()
        self.cursors()

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """A context manager: everything written inside commits atomically."""
        try:
            with self.cache.transact():
                yield
        except BaseException:
            self._counters = None  # the cached counters may be ahead of what was rolled back
            raise

    def get(self, key: str, default: Any = None) -> Any:
        value = loads(self.cache.get(key))
        return default if value is None else value

    def set(self, key: str, value: Any, expire: Optional[float] = None) -> None:
        self.cache.set(key, dumps(value), expire=expire)

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    # -- typed views -----------------------------------------------------------------------

    def pins(self) -> PinMap:
        """``{segment: offsets}`` of lines still pending before each cursor."""
        return decode_pins(self.cache.get("pins"))

    def set_pins(self, pins: dict[str, Union[bytes, Collection[int]]]) -> None:
        self.cache.set("pins", encode_pins(pins))

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
        counters = dict(self.counters() if self._counters is None else self._counters)
        for name, amount in deltas.items():
            counters[name] = counters.get(name, 0) + amount
        self.set("counters", counters)
        self._counters = counters

    def get_traces(self, trace_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The tombstones (not expired) of those of ``trace_ids`` that have one."""
        return self.tombstones.get_many(trace_ids)

    def put_traces(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Write tombstones (in one transaction of their own)."""
        self.tombstones.put_many(records, TRACE_TTL)

    def record_success(self) -> None:
        self.set("last_success_at", time.time())

    def record_error(self, message: str, status: Optional[int] = None) -> None:
        self.set("last_error", {"at": time.time(), "message": message[:500], "status": status})

    def expire(self) -> None:
        """Drop expired entries and tombstones."""
        self.cache.expire()
        self.tombstones.expire()


class Tombstones:
    """Settled traces in a small SQLite table: many rows per transaction, cheap lookups."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS tomb ("
            "trace_id TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL)"
        )
        for suffix in ("", "-wal", "-shm"):
            try:
                os.chmod(path + suffix, FILE_MODE)
            except OSError:
                pass

    def get_many(self, trace_ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        now = time.time()
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._con.execute(
                f"SELECT trace_id, record FROM tomb WHERE expires > ? AND trace_id IN ({marks})",  # noqa: S608 (placeholders only)
                (now, *chunk),
            ).fetchall()
            for trace_id, raw in rows:
                value = loads(raw)
                if isinstance(value, dict):
                    found[trace_id] = value
        return found

    def put_many(self, records: list[tuple[str, dict[str, Any]]], ttl: float) -> None:
        if not records:
            return
        expires = time.time() + ttl
        rows = [(trace_id, dumps(record), expires) for trace_id, record in records]
        with self._con:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO tomb VALUES (?, ?, ?)", rows)

    def expire(self) -> None:
        with self._con:
            self._con.execute("BEGIN")
            self._con.execute("DELETE FROM tomb WHERE expires <= ?", (time.time(),))

    def check(self) -> None:
        """Raise ``sqlite3.DatabaseError`` if the table is damaged."""
        _quick_check(self._con)

    def close(self) -> None:
        self._con.close()


def _quick_check(con: sqlite3.Connection) -> None:
    rows = con.execute("PRAGMA quick_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        raise sqlite3.DatabaseError(f"quick_check: {'; '.join(str(r[0]) for r in rows[:3])}")
