"""The quarantine: events the server refused, kept for a person to inspect, retry or purge.

One JSON file per rejected batch in ``quarantine/``, written atomically (temp file, fsync,
rename) with mode ``0600``. A file holds the queued events exactly as they were enqueued, the
server's status and message (per event where the server said), the number of attempts and
the first and last failure times; never a key. The id is derived from the events' ids, so the
same batch quarantined twice (after a flusher crash) lands in the same file.

``retry`` appends the events back to the journal unchanged (same ids, same timestamps), then
deletes the file: the flusher delivers them exactly once when the server takes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from typing import Any, Optional

from .journal import JournalWriter
from .queuedir import QueueDir, move_aside, write_file_atomic
from .timeutil import iso_from_ns, ns_from_iso

SUFFIX = ".json"


class UnknownQuarantineId(KeyError):
    """No quarantined batch has this id."""


def batch_id(events: Iterable[dict[str, Any]]) -> str:
    """Stable id of a batch: a hash of its event ids."""
    digest = hashlib.sha256()
    for event_id in sorted(str(e.get("id")) for e in events):
        digest.update(event_id.encode() + b"\n")
    return "q" + digest.hexdigest()[:15]


def _path(qd: QueueDir, qid: str) -> str:
    if not qid or "/" in qid or qid.startswith(".") or not qid.replace("-", "").isalnum():
        raise UnknownQuarantineId(qid)
    return os.path.join(qd.quarantine, qid + SUFFIX)


def write_batch(
    qd: QueueDir,
    events: list[dict[str, Any]],
    reason: str,
    status: Optional[int],
    transport: str,
    endpoint: str,
    attempts: int,
    first_failure_at: float,
    errors: Optional[dict[str, dict[str, Any]]] = None,
    response: str = "",
) -> str:
    """Quarantine ``events`` (one file); returns the batch id."""
    qid = batch_id(events)
    now = time.time()
    record = {
        "id": qid,
        "format": 1,
        "reason": reason[:2000],
        "status": status,
        "transport": transport,
        "endpoint": endpoint,
        "attempts": attempts,
        "first_failure_at": _iso(first_failure_at),
        "last_failure_at": _iso(now),
        "created_at": _iso(now),
        "response": response[:8000],
        "errors": errors or {},
        "events": [{k: v for k, v in e.items() if k != "_w"} for e in events],
    }
    data = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    write_file_atomic(_path(qd, qid), data)
    return qid


def _iso(seconds: float) -> str:
    return iso_from_ns(int(seconds * 1_000_000_000))


def _load_file(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        record = json.loads(fh.read())
    if not isinstance(record, dict) or not isinstance(record.get("events"), list):
        raise ValueError("not a quarantine batch")
    return record


def salvage(qd: QueueDir) -> list[str]:
    """Move unreadable quarantine files (half-written, truncated, garbage) and leftovers of
    interrupted writes into ``corrupt-<timestamp>/``; returns the names moved."""
    moved: list[str] = []
    try:
        names = sorted(os.listdir(qd.quarantine))
    except FileNotFoundError:
        return moved
    for name in names:
        path = os.path.join(qd.quarantine, name)
        if name.startswith(".") and name.endswith(".tmp"):
            bad = True  # an atomic write that never finished
        elif name.endswith(SUFFIX):
            try:
                _load_file(path)
                bad = False
            except (OSError, ValueError):
                bad = True
        else:
            bad = False
        if bad:
            try:
                move_aside(qd, path)
                moved.append(name)
            except OSError:
                continue
    return moved


def list_batches(qd: QueueDir) -> tuple[list[dict[str, Any]], list[str]]:
    """Summaries of every batch, oldest first, and the names of unreadable files."""
    summaries: list[dict[str, Any]] = []
    unreadable: list[str] = []
    try:
        names = sorted(os.listdir(qd.quarantine))
    except FileNotFoundError:
        return [], []
    for name in names:
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        try:
            record = _load_file(os.path.join(qd.quarantine, name))
        except (OSError, ValueError):
            unreadable.append(name)
            continue
        summaries.append(
            {
                "id": record.get("id", name[: -len(SUFFIX)]),
                "events": len(record["events"]),
                "reason": record.get("reason"),
                "status": record.get("status"),
                "transport": record.get("transport"),
                "attempts": record.get("attempts"),
                "first_failure_at": record.get("first_failure_at"),
                "last_failure_at": record.get("last_failure_at"),
            }
        )
    summaries.sort(key=lambda s: (str(s.get("first_failure_at")), str(s["id"])))
    return summaries, unreadable


def count_events(qd: QueueDir) -> tuple[int, int]:
    """(batches, events) in quarantine."""
    summaries, _ = list_batches(qd)
    return len(summaries), sum(int(s["events"]) for s in summaries)


def load_batch(qd: QueueDir, qid: str) -> dict[str, Any]:
    """The whole record of one batch; :class:`UnknownQuarantineId` when there is none."""
    path = _path(qd, qid)
    try:
        return _load_file(path)
    except FileNotFoundError:
        raise UnknownQuarantineId(qid) from None


def batch_ids(qd: QueueDir) -> list[str]:
    summaries, _ = list_batches(qd)
    return [str(s["id"]) for s in summaries]


def retry_batches(qd: QueueDir, ids: list[str]) -> int:
    """Put the events of ``ids`` back into the queue, unchanged; returns how many events."""
    writer = JournalWriter(qd.journal)
    total = 0
    try:
        for qid in ids:
            record = load_batch(qd, qid)
            lines = [
                json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
                for event in record["events"]
            ]
            writer.append_many(lines)
            os.unlink(_path(qd, qid))
            total += len(lines)
    finally:
        writer.close()
    return total


def purge_batches(qd: QueueDir, ids: list[str], older_than: Optional[float] = None) -> int:
    """Delete batches (only those first failed more than ``older_than`` seconds ago)."""
    removed = 0
    now = time.time()
    for qid in ids:
        path = _path(qd, qid)
        if older_than is not None:
            try:
                record = load_batch(qd, qid)
            except UnknownQuarantineId:
                continue
            except (OSError, ValueError):
                record = {}
            first = record.get("first_failure_at")
            age = now - _parse_iso_seconds(first) if isinstance(first, str) else now
            if age < older_than:
                continue
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            continue
    return removed


def _parse_iso_seconds(text: str) -> float:
    try:
        return ns_from_iso(text) / 1e9
    except ValueError:
        return 0.0
