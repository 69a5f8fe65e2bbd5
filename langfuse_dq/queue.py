"""The writer side of the queue: append events, never raise, never block, count what is lost.

:class:`EventQueue` wraps this process's :class:`~langfuse_dq.journal.JournalWriter` with the
policies an app needs: a size bound (``max_queue_bytes``), a degraded mode when the disk
fails (full, read-only, directory deleted), one log line per change of state rather than one
per event, and drop counters that reach ``status`` as control records in the journal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from typing import Optional

from .journal import JournalWriteError, JournalWriter
from .queuedir import QueueDir, QueueDirError, open_queue_dir
from .timeutil import now_ns

log = logging.getLogger("langfuse_dq")

SIZE_CHECK_INTERVAL = 1.0
RETRY_INTERVAL = 0.5
DROP_REPORT_INTERVAL = 1.0
#: With ``drop_oldest`` the flusher trims the queue; writers still stop at twice the bound.
HARD_LIMIT_FACTOR = 2


def journal_bytes(journal_dir: str) -> int:
    """Total size of the journal segments (what counts against ``max_queue_bytes``)."""
    total = 0
    try:
        with os.scandir(journal_dir) as entries:
            for entry in entries:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    except OSError:
        return 0
    return total


class EventQueue:
    """Appends encoded events for one client; thread-safe, fork-aware, never raises."""

    def __init__(
        self, root: str, max_bytes: int, full_policy: str = "refuse", create: bool = True
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        factor = HARD_LIMIT_FACTOR if full_policy == "drop_oldest" else 1
        self._limit = max_bytes * factor
        self.qd: Optional[QueueDir] = None
        self._writer: Optional[JournalWriter] = None
        self._state_lock = threading.Lock()
        self._drops: dict[str, int] = {}
        self._dropped_total = 0
        #: events this process appended (a flusher is only needed if there were any)
        self.appended = 0
        self._last_drop_report = 0.0
        self._next_check = 0.0
        self._estimated_bytes = 0
        self._degraded: Optional[str] = None
        self._logged_reason: Optional[str] = None
        self._retry_at = 0.0
        self._create = create
        self._open()

    # -- public ----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """True while events are being written."""
        return self._degraded is None

    @property
    def degraded_reason(self) -> Optional[str]:
        """Why events are currently being dropped, or None."""
        return self._degraded

    @property
    def dropped_total(self) -> int:
        """Events this process dropped since it started."""
        return self._dropped_total

    def put(self, line: bytes, now: float = 0.0) -> bool:
        """Append one encoded event. False when it was dropped (and counted).

        ``now`` is ``time.monotonic()`` if the caller has it already.
        """
        if not now:
            now = time.monotonic()
        if self._degraded is not None and (now < self._retry_at or not self._recover(now)):
            self._drop(self._degraded or "disk_error")
            return False
        if now >= self._next_check:
            self._periodic(now)
        if self._estimated_bytes + len(line) > self._limit:
            self._drop("queue_full")
            return False
        try:
            self._writer.append(line)  # type: ignore[union-attr]
        except JournalWriteError as exc:
            self._enter_degraded(exc, now)
            self._drop(self._degraded or "disk_error")
            return False
        self._estimated_bytes += len(line)
        self.appended += 1
        if self._logged_reason is not None:
            self._log_recovered()
        return True

    def put_control(self, record: dict[str, object]) -> bool:
        """Append a control record (flush marker, drop counts); False when it failed."""
        if self._writer is None:
            return False
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        try:
            self._writer.append(line)
        except JournalWriteError:
            return False
        return True

    def report_drops(self) -> None:
        """Write pending drop counts to the journal, where the flusher and ``status`` see them."""
        with self._state_lock:
            drops = self._drops
            if not drops:
                return
            self._drops = {}
            self._last_drop_report = time.monotonic()
        record = {"_c": "drop", "t": now_ns(), "pid": os.getpid(), "reasons": drops}
        if not self.put_control(record):
            with self._state_lock:  # keep them for the next chance
                for reason, count in drops.items():
                    self._drops[reason] = self._drops.get(reason, 0) + count

    def close(self) -> None:
        """Report drop counts and close the segment."""
        self.report_drops()
        if self._writer is not None:
            self._writer.close()

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.qd = open_queue_dir(self.root, create=self._create)
        except QueueDirError as exc:
            self._enter_degraded(exc, time.monotonic())
            return
        self._writer = JournalWriter(self.qd.journal)
        self._estimated_bytes = journal_bytes(self.qd.journal)
        self._next_check = time.monotonic() + SIZE_CHECK_INTERVAL

    def _periodic(self, now: float) -> None:
        """About once a second: re-measure the queue, check our segment, report drops."""
        self._next_check = now + SIZE_CHECK_INTERVAL
        if self.qd is not None:
            self._estimated_bytes = journal_bytes(self.qd.journal)
        if self._writer is not None:
            lost = self._writer.verify()
            if lost:
                with self._state_lock:
                    self._drops["queue_dir_removed"] = (
                        self._drops.get("queue_dir_removed", 0) + lost
                    )
                    self._dropped_total += lost
                log.error(
                    "langfuse-dq: queue directory %s (or its journal) was removed while in use; "
                    "%d events written since the last check were lost; recreating it",
                    self.root,
                    lost,
                )
                self._logged_reason = "queue_dir_removed"  # one error for this episode
                self._recover(now)
        if self._drops and now - self._last_drop_report >= DROP_REPORT_INTERVAL:
            self.report_drops()

    def _drop(self, reason: str) -> None:
        with self._state_lock:
            self._drops[reason] = self._drops.get(reason, 0) + 1
            self._dropped_total += 1
        if reason == "queue_full" and self._degraded is None:
            self._log_once_full()

    _full_logged_at = 0.0

    def _log_once_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged_at >= 60.0:
            self._full_logged_at = now
            log.error(
                "langfuse-dq: queue %s is full (max_queue_bytes=%d); new events are dropped "
                "and counted in `langfuse-dq status` until the flusher catches up",
                self.root,
                self.max_bytes,
            )

    def _enter_degraded(self, exc: OSError, now: float) -> None:
        code = errno.errorcode.get(exc.errno or 0, "EIO")
        reason = f"disk_error:{code}"
        if self._logged_reason is None:  # one error per episode, until writing works again
            self._logged_reason = reason
            log.error(
                "langfuse-dq: cannot write to queue directory %s (%s); tracing events are "
                "dropped and counted until it recovers, the app is not affected",
                self.root,
                exc.strerror or exc,
            )
        self._degraded = reason
        self._retry_at = now + RETRY_INTERVAL

    def _recover(self, now: float) -> bool:
        """Reopen the directory after a failure; the next append tells whether it worked."""
        self._retry_at = now + RETRY_INTERVAL
        try:
            self.qd = open_queue_dir(self.root, create=self._create)
        except QueueDirError as exc:
            self._enter_degraded(exc, now)
            return False
        if self._writer is None:
            self._writer = JournalWriter(self.qd.journal)
        self._degraded = None
        self._next_check = 0.0
        return True

    def _log_recovered(self) -> None:
        previous, self._logged_reason = self._logged_reason, None
        log.warning(
            "langfuse-dq: writing to queue directory %s again (recovered from %s; %d events "
            "dropped so far in this process)",
            self.root,
            previous,
            self._dropped_total,
        )
