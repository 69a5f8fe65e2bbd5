"""The figures behind ``stats()``, ``langfuse-dq status`` and the health endpoints.

Read-only with respect to the queue: journal tails are counted from the flusher's cursors,
the state cache is read, the quarantine directory listed. Stable keys (more may be added,
none renamed): pending, pending_bytes, oldest_pending_age_s, in_flight, delivered, retried,
duplicate_risk, quarantined, quarantined_batches, dropped, dropped_by_reason, flusher_pid,
flusher_alive, last_success_at, last_error, last_error_at, auth_error, queue_dir.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Optional

from .config import Config
from .journal import list_segments, scan_tail
from .quarantine import list_batches
from .queuedir import QueueDir, QueueDirError, count_corrupt, open_queue_dir
from .spawn import flusher_info
from .state import FlusherState
from .timeutil import iso_from_ns


def _iso(seconds: Optional[float]) -> Optional[str]:
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    return iso_from_ns(int(seconds * 1_000_000_000))


def _first_event_ns(line: bytes) -> Optional[int]:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    t = record.get("_t") if isinstance(record, dict) else None
    return t if isinstance(t, int) else None


def _line_at(path: str, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.readline().rstrip(b"\n")
    except OSError:
        return b""


def empty_stats(queue_dir: str, error: Optional[str] = None) -> dict[str, Any]:
    return {
        "queue_dir": queue_dir,
        "pending": 0,
        "pending_bytes": 0,
        "oldest_pending_age_s": None,
        "in_flight": 0,
        "delivered": 0,
        "retried": 0,
        "duplicate_risk": 0,
        "quarantined": 0,
        "quarantined_batches": 0,
        "dropped": 0,
        "dropped_by_reason": {},
        "flusher_pid": None,
        "flusher_alive": False,
        "last_success_at": None,
        "last_error": error,
        "last_error_at": None,
        "auth_error": None,
        "auth_error_at": None,
    }


def collect_stats(config: Config) -> dict[str, Any]:
    """Stats of ``config.queue_dir`` (an unusable directory is reported, not raised)."""
    try:
        qd = open_queue_dir(config.queue_dir, create=False)
    except QueueDirError as exc:
        return empty_stats(config.queue_dir, error=str(exc))
    return queue_stats(qd)


def queue_stats(qd: QueueDir) -> dict[str, Any]:
    """Stats of an open queue directory."""
    out = empty_stats(qd.root)
    now_ns = time.time_ns()
    try:
        state = FlusherState(qd)
        try:
            cursors = state.cursors()
            pins = state.pins()
            counters = state.counters()
            inflight = state.get("inflight") or {}
            last_success = state.get("last_success_at")
            last_error = state.get("last_error")
            auth_error = state.get("auth_error")
        finally:
            state.close()
    except sqlite3.DatabaseError as exc:
        # The flusher moves a damaged state aside when it next starts; until then every
        # journal line counts as pending (it will be read again).
        cursors, pins, counters, inflight, last_success, auth_error = {}, {}, {}, {}, None, None
        last_error = {
            "message": f"the flusher's state database is damaged ({exc}); the next flusher"
            " moves it aside and starts fresh",
            "at": time.time(),
        }

    pending = 0
    pending_bytes = 0
    oldest: Optional[int] = None
    dropped_unread: dict[str, int] = {}
    for seg, size in list_segments(qd.journal):
        path = os.path.join(qd.journal, seg.name)
        pinned = pins.get(seg.name)
        if pinned:
            pending += len(pinned)
            first_pin = _line_at(path, int(min(pinned)))
            t = _first_event_ns(first_pin) if first_pin else None
            if t is not None and (oldest is None or t < oldest):
                oldest = t
        offset = cursors.get(seg.name, 0)
        if offset >= size:
            continue
        lines, nbytes, first, controls = scan_tail(path, offset)
        pending += lines
        pending_bytes += nbytes
        for raw in controls:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("_c") == "drop":
                for reason, n in (record.get("reasons") or {}).items():
                    if isinstance(n, int):
                        dropped_unread[str(reason)] = dropped_unread.get(str(reason), 0) + n
        t = _first_event_ns(first) if first else None
        if t is not None and (oldest is None or t < oldest):
            oldest = t

    dropped_by_reason: dict[str, int] = {}
    for name, value in counters.items():
        if name.startswith("dropped:"):
            dropped_by_reason[name[len("dropped:") :]] = value
    for reason, n in dropped_unread.items():
        dropped_by_reason[reason] = dropped_by_reason.get(reason, 0) + n
    # An authentication error counts until the server accepts a request again.
    current_auth = auth_error if isinstance(auth_error, dict) else None
    if (
        current_auth
        and isinstance(last_success, (int, float))
        and float(current_auth.get("at") or 0) < last_success
    ):
        current_auth = None
    batches, _unreadable = list_batches(qd)
    pid, alive = flusher_info(qd)

    out.update(
        pending=pending,
        pending_bytes=pending_bytes,
        oldest_pending_age_s=round((now_ns - oldest) / 1e9, 3) if oldest is not None else None,
        in_flight=int(inflight.get("n", 0)) if isinstance(inflight, dict) else 0,
        delivered=counters.get("delivered", 0),
        retried=counters.get("retried", 0),
        duplicate_risk=counters.get("duplicate_risk", 0),
        quarantined=sum(int(b["events"]) for b in batches),
        quarantined_batches=len(batches),
        dropped=sum(dropped_by_reason.values()),
        dropped_by_reason=dropped_by_reason,
        flusher_pid=pid,
        flusher_alive=alive,
        last_success_at=_iso(last_success),
        last_error=last_error.get("message") if isinstance(last_error, dict) else None,
        last_error_at=_iso(last_error.get("at")) if isinstance(last_error, dict) else None,
        auth_error=current_auth.get("message") if current_auth else None,
        auth_error_at=_iso(current_auth.get("at")) if current_auth else None,
    )
    corrupt = count_corrupt(qd)
    if corrupt:
        out["corrupt_files"] = corrupt
    for name in ("torn_lines", "corrupt_lines", "corrupt_segments", "corrupt_state"):
        if counters.get(name):
            out[name] = counters[name]
    return out
