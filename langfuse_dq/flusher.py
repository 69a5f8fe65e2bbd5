"""The flusher: the one process that drains a queue directory into Langfuse.

It holds ``flusher.lock`` (a filelock) for its whole life, so at most one drains a directory;
a second one gives up at once. Its loop:

1. **intake**: read new complete lines from every journal segment; fold observation events
   into the :class:`~langfuse_dq.assemble.Assembler`, queue scores (and, with
   ``transport="ingestion"``, every envelope) for sending;
2. **collect** what is complete (see assemble.py);
3. **deliver** about one request's worth, once ``batch_size`` events are ready or the oldest
   has waited ``flush_interval``: retrying what is retryable with backoff until it succeeds
   (no retry budget drops data), bisecting rejected batches to the bad events and
   quarantining those;
4. **commit**, in one state transaction: per segment, how far it was read and which lines
   before that are still pending ("pins"); tombstones of settled traces; counters; pending
   flush markers. Only then are fully consumed segments deleted.

Every pending event stays in the journal until it is settled, so the state never holds a
copy of an event. A flusher killed at any point loses nothing: the next one re-reads the
pinned lines and everything after the last cursor. Only what was sent after the last commit is
sent again, and counted as ``duplicate_risk``.
"""

from __future__ import annotations

import argparse
import array
import gc
import gzip
import json
import json.scanner
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import filelock

from .assemble import Assembler, Ready
from .config import Config, resolve_config
from .journal import list_segments, read_block, sealed_segments, split_block
from .proc import pid_alive, process_start_ticks
from .quarantine import salvage, write_batch
from .queuedir import FILE_MODE, QueueDir, open_queue_dir, write_file_atomic
from .state import FlusherState, open_state
from .timeutil import now_ns
from .transport.http import Backoff, HttpSender, TransportError, Verdict, classify
from .transport.ingestion import (
    INGESTION_PATH,
    MAX_BATCH_BYTES,
    envelope_text,
    parse_result,
    request_body,
    wire_envelope,
)
from .transport.otlp import OTLP_PATH, OtlpEncoder, encode_span

log = logging.getLogger("langfuse_dq.flusher")
_decode = json.JSONDecoder().decode
#: The JSON scanner (C when available): ``(value, end index)`` of the value at an index.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed types the C scanner oddly
)

#: Lines stamped this long before the moment we found a segment's end may still be written.
MARGIN_NS = 250_000_000
POLL_INTERVAL = 0.05
MAX_INTAKE_BYTES = 4 << 20
MIN_INTAKE_BYTES = 64 << 10
#: Reads go to one writer's journal at a time, in chunks of at most this many bytes.
CHUNK_BYTES = 256 << 10
MAX_REQUEST_BYTES = 3_500_000
#: With ``full_policy=drop_oldest``, how often (seconds) the journal is checked against the bound.
TRIM_INTERVAL = 1.0
IDLE_EXIT_SECONDS = float(os.environ.get("LANGFUSE_DQ_IDLE_EXIT", "30"))
RETRY_BASE = float(os.environ.get("LANGFUSE_DQ_RETRY_BASE", "0.5"))
RETRY_CAP = float(os.environ.get("LANGFUSE_DQ_RETRY_CAP", "30"))
AUTH_RETRY_BASE = float(os.environ.get("LANGFUSE_DQ_AUTH_RETRY_BASE", "15"))
AUTH_RETRY_CAP = float(os.environ.get("LANGFUSE_DQ_AUTH_RETRY_CAP", "300"))
HEARTBEAT_SECONDS = 1.0
RECEIPT_TTL = 3600.0
SCORE_TYPES = frozenset(("score-create",))
OBSERVATION_TYPES = frozenset(
    (
        "trace-create",
        "span-create",
        "span-update",
        "generation-create",
        "generation-update",
        "event-create",
    )
)


class Interrupted(Exception):
    """A stop was requested while delivering; what was not sent stays pending."""


class AuthFailure(Exception):
    """401/403/404 in a run that must not wait for it (``flush``)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass
class RunResult:
    """What a run did, for ``langfuse-dq flush`` and ``Langfuse.flush``."""

    delivered: int = 0
    quarantined: int = 0
    dropped: int = 0
    marker_done: bool = False
    auth_error: Optional[str] = None
    stopped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Marker:
    """A flush request read from the journal: satisfied when all events up to ``t`` are done."""

    id: str
    t: int
    quarantined: int = 0
    dropped: int = 0


class OpenLines:
    """The offsets of one segment's pending lines, kept so that persisting all of them (every
    commit) copies machine integers instead of walking tens of thousands of Python ints.

    Lines are read in file order, so offsets arrive increasing: each is appended to an
    ``array('q')``, and a dict maps it to its slot. Closing one overwrites its slot with -1;
    :meth:`packed` is then the array's bytes with every -1 removed by one ``bytes.replace``
    (on a little-endian machine a real offset, below 2**56, has a zero top byte, so eight
    0xff bytes only ever match a whole -1 slot). Slots are compacted once most are dead.
    """

    __slots__ = ("_dead", "_offsets", "_slot")

    _MARK = array.array("q", [-1]).tobytes()
    _REPLACE_OK = sys.byteorder == "little"

    def __init__(self) -> None:
        self._offsets = array.array("q")
        self._slot: dict[int, int] = {}
        self._dead = 0

    def __len__(self) -> int:
        return len(self._slot)

    def __iter__(self) -> Iterator[int]:
        return iter(self._slot)

    def add(self, offset: int) -> None:
        if offset not in self._slot:
            self._slot[offset] = len(self._offsets)
            self._offsets.append(offset)

    def discard(self, offset: int) -> None:
        slot = self._slot.pop(offset, None)
        if slot is not None:
            self._offsets[slot] = -1
            self._dead += 1
            if self._dead > 4096 and self._dead > len(self._slot):
                self._compact()

    def discard_all(self, offsets: list[int]) -> None:
        """:meth:`discard` each of ``offsets`` (the same outcome, with less per-line work)."""
        pop = self._slot.pop
        marks = self._offsets
        dead = 0
        for offset in offsets:
            slot = pop(offset, None)
            if slot is not None:
                marks[slot] = -1
                dead += 1
        self._dead += dead
        if self._dead > 4096 and self._dead > len(self._slot):
            self._compact()

    def clear(self) -> None:
        self._offsets = array.array("q")
        self._slot.clear()
        self._dead = 0

    def packed(self) -> bytes:
        """The live offsets as native int64s, in the order they were read."""
        if not self._dead:
            return self._offsets.tobytes()
        if self._REPLACE_OK:
            return self._offsets.tobytes().replace(self._MARK, b"")
        return array.array("q", [o for o in self._offsets if o >= 0]).tobytes()

    def _compact(self) -> None:
        offsets = array.array("q")
        offsets.frombytes(self.packed())
        self._offsets = offsets
        self._slot = dict(zip(offsets, range(len(offsets))))
        self._dead = 0


class SegmentBook:
    """What is known of one journal segment: how far it is read, which lines still pend.

    Persisted as a cursor (every line before it was read and is done, or pinned) and the
    pinned offsets: lines before the cursor whose events are still pending. A restarted
    flusher re-reads from the first pin, takes the pinned lines and skips the rest.
    """

    __slots__ = ("cursor", "last_t", "name", "open", "pins", "read_pos")

    def __init__(self, name: str, cursor: int = 0, pins: Optional[set[int]] = None) -> None:
        self.name = name
        self.cursor = cursor
        #: pinned lines from before a restart, not yet read again
        self.pins = pins or set()
        self.read_pos = min(self.pins) if self.pins else cursor
        #: offsets of the pending lines read in this run
        self.open = OpenLines()
        self.last_t = 0

    def take(self, offset: int) -> bool:
        """Should the line at ``offset`` be processed (False: done before a restart)?"""
        if offset >= self.cursor:
            return True
        if offset in self.pins:
            self.pins.discard(offset)
            return True
        return False

    def close(self, offset: int) -> None:
        """The line at ``offset`` is done."""
        self.open.discard(offset)

    def commit_point(self) -> tuple[int, Union[bytes, Collection[int]]]:
        """(cursor, pinned offsets) as they may be persisted now (as native int64s, or ints
        while pins from before a restart remain)."""
        cursor = max(self.cursor, self.read_pos)
        if not self.pins:
            return cursor, self.open.packed()
        pins = set(self.open)
        pins.update(p for p in self.pins if p >= self.read_pos)
        return cursor, pins

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing left to re-read."""
        return not self.open and not self.pins


class Outbox:
    """Items ready to send, in one queue per endpoint (``otlp``: spans, ``ingestion``:
    envelopes), oldest first, with their event counts kept up to date."""

    __slots__ = ("events", "queues", "since")

    def __init__(self) -> None:
        self.queues: dict[str, deque[Ready]] = {"otlp": deque(), "ingestion": deque()}
        #: events accounted for by the items of each queue
        self.events = {"otlp": 0, "ingestion": 0}
        #: monotonic time since which each queue's oldest item has waited (about)
        self.since = {"otlp": 0.0, "ingestion": 0.0}

    def __len__(self) -> int:
        return len(self.queues["otlp"]) + len(self.queues["ingestion"])

    def __bool__(self) -> bool:
        return bool(self.queues["otlp"] or self.queues["ingestion"])

    def append(self, item: Ready) -> None:
        kind = "otlp" if item.span is not None else "ingestion"
        queue = self.queues[kind]
        if not queue:
            self.since[kind] = time.monotonic()
        queue.append(item)
        self.events[kind] += len(item.events)

    def take(self, kind: str, limit: int) -> list[Ready]:
        """The oldest items of ``kind``: about ``limit`` events, and at least one item."""
        queue = self.queues[kind]
        items: list[Ready] = []
        count = 0
        while queue and (count < limit or not items):
            item = queue.popleft()
            items.append(item)
            count += len(item.events)
        self.events[kind] -= count
        if queue:
            self.since[kind] = time.monotonic()
        return items

    def put_back(self, items: list[Ready]) -> None:
        """Return items taken earlier to the front of their queues, in their order."""
        for item in reversed(items):
            kind = "otlp" if item.span is not None else "ingestion"
            if not self.queues[kind]:
                self.since[kind] = time.monotonic()
            self.queues[kind].appendleft(item)
            self.events[kind] += len(item.events)

    def __contains__(self, item: object) -> bool:
        return any(any(i is item for i in queue) for queue in self.queues.values())


class Flusher:
    """Drains one queue directory. Use :meth:`acquire` first; one per process."""

    def __init__(self, config: Config, qd: QueueDir) -> None:
        self.config = config
        self.qd = qd
        self.lock = filelock.FileLock(qd.lock_path, thread_local=False, mode=FILE_MODE)
        self.stop_event = threading.Event()
        self.state: Optional[FlusherState] = None
        self.sender = HttpSender(config)
        self.encoder = OtlpEncoder(config.public_key)
        self.otlp = config.transport == "otlp"
        self.assembler = Assembler(
            load=self._load_traces,
            max_open_ns=int(config.max_open_seconds * 1e9),
            writer_alive=self._writer_alive,
        )
        self.books: dict[str, SegmentBook] = {}
        self.markers: list[Marker] = []
        self.marker_due = False
        self.outbox = Outbox()
        self._open_items: dict[int, Ready] = {}
        self._pending: Optional[tuple[str, list[Ready], Future[Any]]] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self.deadline: Optional[float] = None
        self.deltas: dict[str, int] = {}
        #: events sent (or about to be) since the last commit, as the state records them
        self.inflight = 0
        self.uncommitted = False
        self.last_success = 0.0
        self._success_written = 0.0
        self._errored = False
        self._markers_written: Optional[list[dict[str, Any]]] = None
        #: sealed segments (they never grow again) and their sizes, as the last intake saw them
        self.sealed_sizes: dict[str, int] = {}
        #: the last intake read every segment to its end; the last request was a full one
        self.caught_up = False
        self.last_full = False
        self.watermark = 0
        self.last_commit = time.monotonic()
        self.last_activity = time.monotonic()
        self.last_heartbeat = 0.0
        self.alive_cache: dict[str, bool] = {}
        #: per writer, the latest time stamp read from its journal (how far it was read)
        self.writer_t: dict[str, int] = {}
        #: lines and bytes read so far (their ratio sizes the rounds)
        self.read_lines = 0
        self.read_bytes = 0
        #: this flusher's clock (see :meth:`clock_ns`), and how far ahead of the wall clock it is
        self._wall0 = now_ns()
        self._mono0 = time.monotonic_ns()
        self.scan_ns = self._wall0
        self.skew_ns = 0
        #: when the queue was last checked against ``max_queue_bytes`` (``drop_oldest``)
        self._trimmed_at = -TRIM_INTERVAL
        self.result = RunResult()
        self.fail_on_auth = False
        self.auth_blocked: Optional[str] = None
        self._receipts_cleaned = 0.0
        self._retired_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the flusher lock; False when another process holds it."""
        try:
            self.lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        try:
            salvaged = salvage(self.qd)
            if salvaged:
                log.error(
                    "moved %d damaged quarantine file(s) aside into corrupt-*/: %s",
                    len(salvaged),
                    ", ".join(salvaged),
                )
            self.state = open_state(self.qd)
            self._load()
            self._heartbeat(force=True)
        except BaseException:
            if self.state is not None:
                self.state.close()
                self.state = None
            self.lock.release()
            raise
        return True

    def release(self) -> None:
        """Commit, then let go of the lock. Undelivered events stay pending in the journal."""
        try:
            if self.state is not None:
                try:
                    self.finish_pending()
                except (Interrupted, AuthFailure):
                    pass
                self.commit()
                if self.last_success > self._success_written:
                    self.state.set("last_success_at", self.last_success)
                self._heartbeat_stopped()
                self.state.close()
                self.state = None
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self.lock.is_locked:
                self.lock.release()
            self.sender.close()

    def _load(self) -> None:
        assert self.state is not None
        st = self.state
        pins = st.pins()
        for name, cursor in st.cursors().items():
            self.books[name] = SegmentBook(name, cursor, pins.get(name))
        self.markers = [
            Marker(str(m["id"]), int(m["t"]), int(m.get("q", 0)), int(m.get("d", 0)))
            for m in st.get("markers", []) or []
            if isinstance(m, dict) and "id" in m and "t" in m
        ]
        inflight = st.get("inflight")
        if isinstance(inflight, dict) and inflight.get("n"):
            # A previous flusher died after sending these and before committing: they are
            # about to be sent again, and may reach the server twice.
            with st.transact():
                st.add_counters({"duplicate_risk": int(inflight["n"])})
                st.delete("inflight")
            log.warning(
                "previous flusher died mid-delivery: %s events may be sent twice", inflight["n"]
            )

    def _heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_heartbeat < HEARTBEAT_SECONDS:
            return
        self.last_heartbeat = now
        if force:
            record = {
                "pid": os.getpid(),
                "start": process_start_ticks(os.getpid()),
                "started_at": time.time(),
                "transport": self.config.transport,
            }
            write_file_atomic(self.qd.heartbeat_path, json.dumps(record).encode(), fsync=False)
        else:
            try:
                os.utime(self.qd.heartbeat_path, None)
            except OSError:
                self._heartbeat(force=True)

    def clock_ns(self) -> int:
        """Now, in nanoseconds: the wall clock at the flusher's start, advanced by the monotonic
        clock. Decisions by time (the watermark, grace periods, idle traces, open observations)
        use it, so a step of the system clock neither stalls nor rushes them: time stamps read
        from the journal are moved onto it (``skew_ns``) as they are read."""
        return self._wall0 + time.monotonic_ns() - self._mono0

    def _heartbeat_stopped(self) -> None:
        """Say no flusher runs here now (the pid may be an app's, after an in-process flush)."""
        record = {"pid": None, "stopped_at": time.time()}
        try:
            write_file_atomic(self.qd.heartbeat_path, json.dumps(record).encode(), fsync=False)
            os.utime(self.qd.heartbeat_path, (0, 0))
        except OSError:
            pass

    def request_stop(self) -> None:
        """Stop soon: after the current request, never leaving a round half-recorded."""
        self.stop_event.set()

    # -- the loop ----------------------------------------------------------------------------

    def run(
        self,
        exit_when_idle: bool = False,
        until_marker: Optional[str] = None,
        deadline: Optional[float] = None,
        until_drained: bool = False,
    ) -> RunResult:
        """Drain until stopped (worker), idle (spawned flusher), or a marker/deadline (flush)."""
        assert self.state is not None, "acquire() first"
        self.deadline = deadline
        draining = until_marker is not None or until_drained
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._heartbeat()
                # Do not read further while a lot waits to be sent: memory stays flat.
                room = len(self.outbox) < 4 * self._max_items() and not self.assembler.deferred
                got = self.intake() if room else 0
                forced = self._forced_time()
                self._collect(forced)
                sent = True
                # The end of a backlog (the last request was full, the journal is read to its
                # end and nothing is held back) goes out at once, not after flush_interval.
                tail = self.last_full and self.caught_up and not self.assembler.held
                kind = self._due(forced, draining or tail) if self.outbox else None
                if kind is not None:
                    self.deliver(kind)
                elif self._pending is not None:
                    self.finish_pending()
                else:
                    sent = False
                if sent or (
                    self.uncommitted
                    and (
                        draining
                        or time.monotonic() - self.last_commit >= self.config.flush_interval
                    )
                ):
                    self.commit()  # while the request just sent is on the wire
                self._settle_markers()
                if until_marker is not None and self._receipt_exists(until_marker):
                    self.result.marker_done = True
                    break
                if until_drained and self._drained():
                    break
                if got or sent:
                    self.last_activity = time.monotonic()
                elif exit_when_idle and self._idle():
                    break
                if not got and not sent and not self.assembler.deferred:
                    self.stop_event.wait(POLL_INTERVAL)
        except Interrupted:
            self.result.stopped = True
        except AuthFailure as exc:
            self.result.auth_error = str(exc)
        finally:
            self.deadline = None
        return self.result

    def _due(self, forced: int, draining: bool) -> Optional[str]:
        """The endpoint to send to now (the one whose items waited longest), if any."""
        batch_size = self.config.batch_size
        now = time.monotonic()
        due: Optional[str] = None
        for kind, queue in self.outbox.queues.items():
            if not queue:
                continue
            since = self.outbox.since[kind]
            if (
                forced
                or draining
                or len(queue) >= batch_size
                or self.outbox.events[kind] >= batch_size
                or now - since >= self.config.flush_interval
            ) and (due is None or since < self.outbox.since[due]):
                due = kind
        return due

    def _idle(self) -> bool:
        if self.outbox or self.uncommitted or self.assembler.active or self.markers:
            return False
        if self._pending is not None:
            return False
        if time.monotonic() - self.last_activity < IDLE_EXIT_SECONDS:
            return False
        # Last look before leaving: anything written meanwhile keeps us here.
        return not self._unread()

    def _drained(self) -> bool:
        if self.outbox or self.uncommitted or self.assembler.active or self._pending is not None:
            return False
        return not self._unread()

    def _unread(self) -> bool:
        for seg, size in list_segments(self.qd.journal):
            book = self.books.get(seg.name)
            if size > (book.read_pos if book else 0):
                return True
        return False

    # -- intake ------------------------------------------------------------------------------

    def trim_oldest(self, force: bool = False) -> int:
        """With ``full_policy=drop_oldest``: discard the oldest unread lines while the journal is
        bigger than ``max_queue_bytes``, counted as ``dropped:queue_full_oldest``; returns how
        many events were discarded. Runs at most once per ``TRIM_INTERVAL`` (also while backing
        off from a failing server, when the queue grows fastest).

        "Oldest" goes by segment: segments least recently written first, each from where
        reading stopped. Control lines in the discarded part (flush markers, drop counts) are
        still honoured. Disk space comes back when a fully read segment is deleted, so a
        writer's current segment (up to 8 MiB) is only freed once it rotates or its writer
        exits; writers themselves refuse new events at twice the bound.
        """
        if self.config.full_policy != "drop_oldest":
            return 0
        now = time.monotonic()
        if not force and now - self._trimmed_at < TRIM_INTERVAL:
            return 0
        self._trimmed_at = now
        segments = list_segments(self.qd.journal)
        excess = sum(size for _, size in segments) - self.config.max_queue_bytes
        if excess <= 0:
            return 0
        candidates: list[tuple[float, str, int]] = []
        for seg, size in segments:
            book = self.books.get(seg.name)
            if book is not None and book.read_pos >= size:
                continue
            try:
                mtime = os.stat(os.path.join(self.qd.journal, seg.name)).st_mtime
            except OSError:
                continue
            candidates.append((mtime, seg.name, size))
        discarded = 0
        for _mtime, name, size in sorted(candidates):
            if excess <= 0:
                break
            book = self.books.get(name)
            if book is None:
                book = self.books[name] = SegmentBook(name)
            pos = book.read_pos
            path = os.path.join(self.qd.journal, name)
            while excess > 0 and pos < size:
                data, new_pos = read_block(path, pos, min(excess, CHUNK_BYTES, size - pos))
                if new_pos <= pos:
                    break  # an unterminated last line: being written, or torn (intake decides)
                for offset, line in split_block(data, pos):
                    if not book.take(offset):
                        continue
                    if line.startswith(b'{"_c":'):
                        self._control(line)
                    else:
                        discarded += 1
                excess -= new_pos - pos
                pos = book.read_pos = new_pos
                self.uncommitted = True
        if discarded:
            self._add("dropped:queue_full_oldest", discarded)
            log.warning(
                "queue over max_queue_bytes=%d: discarded the %d oldest unsent events"
                " (full_policy=drop_oldest)",
                self.config.max_queue_bytes,
                discarded,
            )
        return discarded

    def intake(self) -> int:
        """Read new journal lines; returns how many were read.

        Writers are read in time order: each chunk goes to the writer whose reading has got
        least far in time, so that every writer's journal advances together. The watermark is
        the time up to which every writer has been read (less ``MARGIN_NS``): a writer with
        lines left to read holds it at the last time stamp read from it (at 0 before the first
        chunk), a live writer read to its end lets it go to now, a dead one does not count.
        """
        self.trim_oldest()
        scan_ns = self.scan_ns = self.clock_ns()
        self.skew_ns = scan_ns - now_ns()
        segments = list_segments(self.qd.journal)
        self.alive_cache = {}
        sealed = sealed_segments(segments)
        # About one request's worth of lines per round (by the mean line size so far): each
        # round sends one request, and reading as much as it sends keeps the request on the
        # wire overlapping this thread's work instead of alternating long reads and sends.
        line_bytes = self.read_bytes // self.read_lines if self.read_lines > 100 else 1024
        budget = self.config.batch_size * line_bytes * 5 // 4
        budget = min(MAX_INTAKE_BYTES, max(MIN_INTAKE_BYTES, budget))
        present: set[str] = set()
        #: per writer, its segments (oldest first) with their sizes at this scan
        queues: dict[str, list[tuple[SegmentBook, int]]] = {}
        for seg, size in segments:
            present.add(seg.name)
            book = self.books.get(seg.name)
            if book is None:
                book = self.books[seg.name] = SegmentBook(seg.name)
            if book.read_pos > size:
                log.error("journal segment %s is shorter than its cursor; rereading it", seg.name)
                self._add("corrupt_segments", 1)
                book.cursor = book.read_pos = 0
                book.open.clear()
                book.pins.clear()
            queues.setdefault(seg.writer, []).append((book, size))
            if seg.name in sealed:
                self.sealed_sizes[seg.name] = size
        for name in [n for n in self.books if n not in present]:
            del self.books[name]
            self.uncommitted = True
        writer_t = self.writer_t
        for writer in [w for w in writer_t if w not in queues]:
            del writer_t[writer]
        count = 0
        #: writers with complete lines left to read -> index of their segment to read next
        behind: dict[str, int] = {}
        for writer, queue in queues.items():
            index = _next_unread(queue, 0)
            if index < len(queue):
                behind[writer] = index
        while budget > 0 and behind:
            writer = min(behind, key=lambda w: writer_t.get(w, 0))
            index = behind[writer]
            book, size = queues[writer][index]
            pos = book.read_pos
            if not book.last_t:
                book.last_t = writer_t.get(writer, 0)
            path = os.path.join(self.qd.journal, book.name)
            data, new_pos = read_block(path, pos, min(budget, CHUNK_BYTES, size - pos))
            if new_pos > pos:
                budget -= new_pos - pos
                lines = self._ingest_block(writer, book, pos, data)
                count += lines
                self.read_lines += lines
                self.read_bytes += new_pos - pos
                book.read_pos = new_pos
                self.uncommitted = True
                if book.last_t > writer_t.get(writer, 0):
                    writer_t[writer] = book.last_t
            elif book.name in sealed:
                # No newline after pos, and it will not grow: the writer died mid-append,
                # leaving an unterminated last line that was never acknowledged.
                self._add("torn_lines", 1)
                book.read_pos = size
                self.uncommitted = True
            else:
                del behind[writer]  # a line is being appended right now: next round
                continue
            index = _next_unread(queues[writer], index)
            if index < len(queues[writer]):
                behind[writer] = index
            else:
                del behind[writer]
        marks: list[int] = []
        caught_up = True
        for writer, queue in queues.items():
            if _next_unread(queue, 0) < len(queue):
                marks.append(writer_t.get(writer, 0) - MARGIN_NS)
                caught_up = False
            elif queue[-1][0].name not in sealed:
                marks.append(scan_ns - MARGIN_NS)  # a live writer, read to its end
        self.watermark = max(self.watermark, min(marks) if marks else scan_ns - MARGIN_NS)
        self.caught_up = caught_up
        return count

    def _ingest_block(self, writer: str, book: SegmentBook, base: int, data: bytes) -> int:
        """Take in the complete lines of ``data``, read at offset ``base`` of ``book``'s segment;
        returns how many lines it held.

        Our writers only ever write ASCII: such a block is decoded once and each line parsed
        in place by the C scanner, with no per-line slicing or decoding (this is the hot loop of
        a drain). A line the scanner does not take whole, and any block that is not ASCII,
        goes through :meth:`_ingest_line`, which treats it exactly as before.
        """
        if not data.isascii():
            lines = split_block(data, base)
            for offset, line in lines:
                if book.take(offset):
                    self._ingest_line(writer, book, offset, line)
            return len(lines)
        text = data.decode("ascii")
        scan = _scan_once
        ingest = self._ingest_event
        cursor = book.cursor
        count = 0
        pos = 0
        end = len(text)
        while pos < end:
            nl = text.find("\n", pos)
            count += 1
            offset = base + pos
            if offset >= cursor or book.take(offset):
                if text.startswith('{"_c":', pos):
                    self._control(data[pos:nl])  # control lines are done once read
                else:
                    try:
                        event, stop = scan(text, pos)
                    except (StopIteration, ValueError):
                        stop = -1
                    if stop == nl:
                        ingest(writer, book, offset, event)
                    else:  # not one JSON value filling the line: the careful path decides
                        self._ingest_line(writer, book, offset, data[pos:nl])
            pos = nl + 1
        return count

    def _ingest_line(self, writer: str, book: SegmentBook, offset: int, line: bytes) -> None:
        if line.startswith(b'{"_c":'):
            self._control(line)
            return  # control lines are done once read
        try:
            event = _decode(line.decode("utf-8", "surrogatepass"))
        except ValueError:
            self._add("corrupt_lines", 1)
            return
        self._ingest_event(writer, book, offset, event)

    def _ingest_event(self, writer: str, book: SegmentBook, offset: int, event: Any) -> None:
        if not isinstance(event, dict):
            self._add("corrupt_lines", 1)
            return
        etype = event.get("type")
        if not isinstance(etype, str) or not isinstance(event.get("body"), dict):
            self._add("corrupt_lines", 1)
            return
        # The stamp, on this flusher's clock: after the line before it of this writer (file
        # order is the order it was written), and never in the future (a clock that jumped).
        t = event.get("_t")
        t = t + self.skew_ns if isinstance(t, int) else self.scan_ns
        floor = book.last_t
        if t <= floor:
            t = floor + 1
        elif t > self.scan_ns:
            t = self.scan_ns if self.scan_ns > floor else floor + 1
        event["_t"] = book.last_t = t
        event["_w"] = writer
        event["_ref"] = (book.name, offset)
        if self.otlp and etype in OBSERVATION_TYPES:
            book.open.add(offset)
            self.assembler.add(event)
        elif not self.otlp or etype in SCORE_TYPES:
            book.open.add(offset)
            self._to_outbox(Ready(events=[event], envelope=wire_envelope(event)))
        else:
            self._quarantine(
                [event], f"event type {etype!r} cannot be sent over OTLP", None, "otlp", "", 0
            )

    def _control(self, line: bytes) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            self._add("corrupt_lines", 1)
            return
        kind = record.get("_c")
        if kind == "drop":
            reasons = record.get("reasons") or {}
            for reason, n in reasons.items():
                if isinstance(n, int) and n > 0:
                    self._add("dropped:" + str(reason), n)
        elif kind == "flush" and isinstance(record.get("id"), str):
            t = record.get("t")
            stamp = t + self.skew_ns if isinstance(t, int) else self.clock_ns()
            self.markers.append(Marker(record["id"], stamp))

    def _to_outbox(self, item: Ready) -> None:
        self.outbox.append(item)

    def _add(self, name: str, amount: int) -> None:
        if amount:
            self.deltas[name] = self.deltas.get(name, 0) + amount
            self.uncommitted = True
            if name.startswith("dropped:") or name == "quarantined":
                for marker in self.markers:
                    if name == "quarantined":
                        marker.quarantined += amount
                    else:
                        marker.dropped += amount

    def _writer_alive(self, writer: str) -> bool:
        cached = self.alive_cache.get(writer)
        if cached is None:
            parts = writer.split("-")
            try:
                cached = pid_alive(int(parts[0]), int(parts[1]))
            except (ValueError, IndexError):
                cached = False
            self.alive_cache[writer] = cached
        return cached

    def _load_traces(self, trace_ids: list[str]) -> dict[str, dict[str, Any]]:
        return self.state.get_traces(trace_ids) if self.state is not None else {}

    def _release_events(self, events: list[dict[str, Any]]) -> None:
        """These events are done: their journal lines may be passed by the cursor."""
        for event in events:
            ref = event.get("_ref")
            if ref is None:
                continue
            book = self.books.get(ref[0])
            if book is not None:
                book.close(ref[1])

    # -- deciding ----------------------------------------------------------------------------

    def _forced_time(self) -> int:
        covered = [m.t for m in self.markers if self.watermark > m.t]
        return max(covered) if covered else 0

    def _collect(self, forced: int) -> None:
        if not self.otlp:
            return
        everything = bool(forced) and not self.marker_due
        self.marker_due = bool(forced)
        outcome = self.assembler.collect(
            self.watermark,
            self.clock_ns(),
            forced,
            everything=everything,
            limit=2 * self._max_items(),
        )
        for item in outcome.ready:
            self._to_outbox(item)
        for reason, events in outcome.dropped.items():
            if events:
                self._add("dropped:" + reason, len(events))
                self._release_events(events)
                log.warning(
                    "%d events dropped (%s): they arrived after their observation or trace was "
                    "exported, or without its create event",
                    len(events),
                    reason,
                )

    def _settle_markers(self) -> None:
        if not self.markers or self.uncommitted or self.outbox or self._pending is not None:
            return
        oldest = self.assembler.oldest_pending_ns() if self.assembler.held else None
        done = [
            m for m in self.markers if self.watermark > m.t and (oldest is None or oldest > m.t)
        ]
        if not done:
            return
        for marker in done:
            receipt = {
                "id": marker.id,
                "at": time.time(),
                "quarantined": marker.quarantined,
                "dropped": marker.dropped,
            }
            path = self._receipt_path(marker.id)
            write_file_atomic(path, json.dumps(receipt).encode(), fsync=False)
        self.markers = [m for m in self.markers if m not in done]
        self.marker_due = False
        assert self.state is not None
        self.state.set("markers", [self._marker_record(m) for m in self.markers])

    @staticmethod
    def _marker_record(m: Marker) -> dict[str, Any]:
        return {"id": m.id, "t": m.t, "q": m.quarantined, "d": m.dropped}

    def _receipt_path(self, marker_id: str) -> str:
        return os.path.join(receipts_dir(self.qd), marker_id + ".json")

    def _receipt_exists(self, marker_id: str) -> bool:
        return os.path.exists(self._receipt_path(marker_id))

    # -- delivery ----------------------------------------------------------------------------

    def deliver(self, kind: str) -> None:
        """Send the oldest items of the ``kind`` queue of the outbox (about one request).
        Each item sent ends delivered or quarantined, and the commit that follows records it.

        Requests are pipelined one deep: a request goes out on a helper thread while this
        thread commits and prepares the next round, and it is judged (and, if need be,
        retried) when the next one is ready. Before a request goes out its events are recorded
        as in flight (counted as ``duplicate_risk`` should the flusher die before the commit
        that settles them). If a stop (signal, deadline, an auth error under ``flush``)
        interrupts, the items not yet delivered go back to the outbox; their events are still
        pending in the journal, so a graceful stop never loses or duplicates anything.
        """
        limit = self._max_items()
        items = self.outbox.take(kind, limit)
        self.last_full = sum(len(item.events) for item in items) >= limit
        for item in items:
            self._open_items[id(item)] = item
        if kind == "otlp":
            limit_bytes = MAX_REQUEST_BYTES - self.encoder.overhead
            batches = _split(items, self._span_text, limit_bytes, limit)
        else:
            batches = _split(items, self._envelope_text, MAX_BATCH_BYTES, limit)
        try:
            for batch in batches:
                body = self._body(kind, batch)  # while the previous request is on the wire
                self.finish_pending()
                self._mark_inflight(batch)  # recorded before it can reach the server
                future = self._pool().submit(self._post, kind, body)
                self._pending = (kind, batch, future)
        except (Interrupted, AuthFailure):
            self._abandon_open_items()
            raise

    def finish_pending(self) -> None:
        """Wait for the request in flight (bounded by the HTTP timeout) and settle it."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        kind, batch, future = pending
        try:
            first: Any = future.result()
        except TransportError as exc:
            first = exc
        try:
            self._send(batch, kind, first)
        except (Interrupted, AuthFailure):
            self._abandon_open_items()
            raise

    def _abandon_open_items(self) -> None:
        leftover = list(self._open_items.values())
        self._open_items = {}
        if self._pending is not None:
            # Its outcome is unknown until it answers: wait (bounded), then count it or not.
            kind, batch, future = self._pending
            self._pending = None
            try:
                response = future.result()
            except TransportError:
                response = None
            if response is not None and self._judge(kind, batch, response)[0].action == "ok":
                leftover = [i for i in leftover if id(i) not in {id(b) for b in batch}]
        self.outbox.put_back([i for i in leftover if i not in self.outbox])
        if leftover:
            log.info("%d items not delivered yet; they stay pending", len(leftover))

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="langfuse-dq-http"
            )
        return self._executor

    def _settled(self, item: Ready, quarantined: bool) -> None:
        """An item reached a final state on the server side (delivered or quarantined)."""
        self._release_events(item.events)
        span = item.span
        if span is None:
            return
        if span.is_root:
            self.assembler.root_settled(span.trace_id, quarantined)

    def _max_items(self) -> int:
        return max(self.config.batch_size, 1)

    @staticmethod
    def _span_text(item: Ready) -> int:
        if item.text is None:
            assert item.span is not None
            item.text = encode_span(item.span)
        return len(item.text) + 1

    @staticmethod
    def _envelope_text(item: Ready) -> int:
        if item.text is None:
            assert item.envelope is not None
            item.text = envelope_text(item.envelope)
        return len(item.text) + 1

    def _mark_inflight(self, batch: list[Ready]) -> None:
        assert self.state is not None
        self.inflight += sum(i.count for i in batch)
        self.state.set("inflight", {"n": self.inflight, "since": time.time()})

    def _send(self, batch: list[Ready], kind: str, first: Any = None) -> None:
        """Deliver ``batch`` whatever it takes: retry, back off, split, bisect, quarantine.

        ``first`` is the outcome of an attempt already made (a response or a
        :class:`TransportError`), or None to start with a request.
        """
        endpoint = OTLP_PATH if kind == "otlp" else INGESTION_PATH
        pending = [batch]
        backoff = Backoff(RETRY_BASE, RETRY_CAP)
        auth_backoff = Backoff(AUTH_RETRY_BASE, AUTH_RETRY_CAP)
        first_failure = time.time()
        attempts = 0
        maybe_duplicated = 0
        assert self.state is not None
        while pending:
            current = pending.pop()
            if first is not None:
                outcome, first = first, None
            else:
                if self.stop_event.is_set():
                    pending.append(current)
                    raise Interrupted()
                self._mark_inflight(current)
                try:
                    outcome = self._post(kind, self._body(kind, current))
                except TransportError as exc:
                    outcome = exc
            verdict, rest = self._judge(kind, current, outcome)
            attempts += 1
            count = sum(i.count for i in current)
            if verdict.action == "ok":
                backoff.reset()
                auth_backoff.reset()
                if maybe_duplicated:
                    self._add("duplicate_risk", maybe_duplicated)
                    maybe_duplicated = 0
                self.auth_blocked = None
                self.last_success = time.time()  # written by the next commit
                if rest:  # some events of a 207 are to be retried
                    self._add("retried", sum(i.count for i in rest))
                    pending.append(rest)
                    self._sleep(backoff.next(verdict.retry_after))
                continue
            self.state.record_error(verdict.message, verdict.status)
            self._errored = True
            if verdict.action == "retry":
                if verdict.maybe_sent:
                    maybe_duplicated = max(maybe_duplicated, count)
                self._add("retried", count)
                log.warning("%s: will retry %d events: %s", kind, count, verdict.message)
                pending.append(current)
                self._sleep(backoff.next(verdict.retry_after))
            elif verdict.action in ("auth", "config"):
                self.auth_blocked = verdict.message
                self.state.set(
                    "auth_error",
                    {"at": time.time(), "message": verdict.message, "status": verdict.status},
                )
                log.error("%s: %s; keeping %d events, backing off", kind, verdict.message, count)
                if self.fail_on_auth:
                    raise AuthFailure(verdict)
                pending.append(current)
                self._sleep(auth_backoff.next(verdict.retry_after))
            elif len(current) > 1:  # 413 or a rejected batch: halve to isolate the bad events
                half = len(current) // 2
                pending.append(current[half:])
                pending.append(current[:half])
            else:
                self._quarantine_items(
                    current,
                    verdict.message,
                    verdict.status,
                    kind,
                    endpoint,
                    attempts,
                    first_failure,
                )

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                raise Interrupted()
            remaining = end - now
            if remaining <= 0:
                return
            self._heartbeat()
            self.trim_oldest()
            step = min(remaining, HEARTBEAT_SECONDS)
            if self.deadline is not None:
                step = min(step, max(self.deadline - now, 0.0))
            if self.stop_event.wait(step):
                raise Interrupted()

    def _body(self, kind: str, batch: list[Ready]) -> bytes:
        """The request body for ``batch`` (encoding each item once), before compression."""
        if kind == "otlp":
            span_text = self._span_text
            return self.encoder.request_body([_text_of(item, span_text) for item in batch])
        envelope_text = self._envelope_text
        return request_body([_text_of(item, envelope_text) for item in batch])

    def _post(self, kind: str, body: bytes) -> Any:
        """One HTTP attempt (runs on the helper thread or this one); raises TransportError.

        OTLP bodies are gzipped here, so that on the helper thread the compression (which
        releases the GIL) overlaps the next round's work instead of delaying it.
        """
        if kind == "otlp":
            body = gzip.compress(body, compresslevel=5)
            return self.sender.post(OTLP_PATH, body, "application/json", gzip=True)
        return self.sender.post(INGESTION_PATH, body, "application/json")

    def _judge(self, kind: str, batch: list[Ready], outcome: Any) -> tuple[Verdict, list[Ready]]:
        """What an attempt's outcome means; settles what it can (delivered, per-event rejects).

        Returns the verdict and, for a 207, the items to retry.
        """
        if isinstance(outcome, TransportError):
            return Verdict("retry", None, str(outcome), maybe_sent=outcome.maybe_sent), []
        verdict = classify(outcome)
        if verdict.action != "ok":
            return verdict, []
        if kind == "otlp":
            self._delivered(batch)
            return verdict, []
        by_id = {str(item.envelope["id"]): item for item in batch if item.envelope is not None}
        result = parse_result(outcome.status, outcome.text, list(by_id))
        self._delivered([by_id[i] for i in result.accepted])
        if result.rejected:
            rejected = [by_id[i] for i in result.rejected]
            errors = {i: {"status": s, "message": m} for i, (s, m) in result.rejected.items()}
            statuses = sorted({s for s, _ in result.rejected.values()})
            first_message = next(iter(result.rejected.values()))[1]
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            self._quarantine_items(
                rejected,
                f"rejected by the server: {first_message}{more}",
                statuses[0] if len(statuses) == 1 else outcome.status,
                "ingestion",
                INGESTION_PATH,
                1,
                time.time(),
                errors=errors,
                response=outcome.text,
            )
        return verdict, [by_id[i] for i in result.retry]

    def _delivered(self, items: list[Ready]) -> None:
        """The server accepted these: their lines are done (``_settled`` for many at once)."""
        open_items = self._open_items
        count = 0
        #: offsets of the lines now done, by segment (closed many at a time)
        done: dict[str, list[int]] = {}
        name = None
        offsets: list[int] = []
        for item in items:
            open_items.pop(id(item), None)
            events = item.events
            count += len(events)
            for event in events:
                ref = event.get("_ref")
                if ref is not None:
                    if ref[0] != name:
                        name = ref[0]
                        offsets = done.setdefault(name, [])
                    offsets.append(ref[1])
            span = item.span
            if span is not None and span.is_root:
                self.assembler.root_settled(span.trace_id, False)
        for name, offsets in done.items():
            book = self.books.get(name)
            if book is not None:
                book.open.discard_all(offsets)
        self._add("delivered", count)

    def _quarantine_items(
        self,
        items: list[Ready],
        reason: str,
        status: Optional[int],
        transport: str,
        endpoint: str,
        attempts: int,
        first_failure: float,
        errors: Optional[dict[str, dict[str, Any]]] = None,
        response: str = "",
    ) -> None:
        for item in items:
            self._open_items.pop(id(item), None)
            self._settled(item, quarantined=True)
        events = [event for item in items for event in item.events]
        self._quarantine(
            events, reason, status, transport, endpoint, attempts, first_failure, errors, response
        )

    def _quarantine(
        self,
        events: list[dict[str, Any]],
        reason: str,
        status: Optional[int],
        transport: str,
        endpoint: str,
        attempts: int,
        first_failure: float = 0.0,
        errors: Optional[dict[str, dict[str, Any]]] = None,
        response: str = "",
    ) -> None:
        if not events:
            return
        qid = write_batch(
            self.qd,
            events,
            reason,
            status,
            transport,
            endpoint,
            attempts,
            first_failure or time.time(),
            errors=errors,
            response=response,
        )
        self._add("quarantined", len(events))
        log.error("quarantined %d events as %s: %s", len(events), qid, reason)

    # -- commit ------------------------------------------------------------------------------

    # -- commit ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Persist the round in one transaction: cursors and pinned lines, tombstones of
        settled traces, counters and markers; then delete segments nothing refers to."""
        st = self.state
        assert st is not None
        persist = self.assembler.take_persist()
        cursors: dict[str, int] = {}
        pins: dict[str, Union[bytes, Collection[int]]] = {}
        for name, book in self.books.items():
            cursor, pinned = book.commit_point()
            cursors[name] = cursor
            if pinned:
                pins[name] = pinned
        st.put_traces([(buf.id, buf.to_record()) for buf in persist])
        with st.transact():
            st.set("cursors", cursors)
            st.set_pins(pins)
            st.add_counters(self.deltas)
            markers = [self._marker_record(m) for m in self.markers]
            if markers != self._markers_written:
                st.set("markers", markers)
                self._markers_written = markers
            # A request still on the wire stays at risk of being sent twice after a crash.
            in_flight = sum(len(i.events) for i in self._pending[1]) if self._pending else 0
            if in_flight:
                st.set("inflight", {"n": in_flight, "since": time.time()})
            elif self.inflight:
                st.delete("inflight")
            # For ``status``, to about the second (at once when it follows an error).
            if self.last_success > self._success_written and (
                self._errored or self.last_success - self._success_written >= 1.0
            ):
                st.set("last_success_at", self.last_success)
                self._success_written = self.last_success
                self._errored = False
        self.result.delivered += self.deltas.get("delivered", 0)
        self.result.quarantined += self.deltas.get("quarantined", 0)
        self.result.dropped += sum(v for k, v in self.deltas.items() if k.startswith("dropped:"))
        self.deltas = {}
        self.inflight = in_flight
        self.uncommitted = False
        for name, cursor in cursors.items():
            self.books[name].cursor = cursor
        self.last_commit = time.monotonic()
        for buf in persist:
            self.assembler.retire(buf.id)
        self._delete_consumed()

    def _delete_consumed(self) -> None:
        # Sealed segments (as the last intake found them: they never grow again) that are
        # read, committed and have nothing pending.
        removed = False
        for name, size in list(self.sealed_sizes.items()):
            book = self.books.get(name)
            if book is None:
                del self.sealed_sizes[name]
            elif book.cursor >= size and book.idle:
                try:
                    os.unlink(os.path.join(self.qd.journal, name))
                except FileNotFoundError:
                    pass
                del self.books[name]
                del self.sealed_sizes[name]
                removed = True
        if removed:
            assert self.state is not None
            self.state.set("cursors", {name: b.cursor for name, b in self.books.items()})
        if time.monotonic() - self._retired_at > 5.0:
            self._retired_at = time.monotonic()
            for trace_id in [t for t, buf in self.assembler.active.items() if not buf.pending]:
                self.assembler.retire(trace_id)
        self._clean_receipts()

    def _clean_receipts(self) -> None:
        now = time.time()
        if now - self._receipts_cleaned < 60:
            return
        self._receipts_cleaned = now
        directory = receipts_dir(self.qd)
        try:
            for entry in os.scandir(directory):
                if now - entry.stat().st_mtime > RECEIPT_TTL:
                    os.unlink(entry.path)
        except OSError:
            pass
        assert self.state is not None
        self.state.expire()


def _split(items: list[Ready], size_of: Any, max_bytes: int, max_items: int) -> list[list[Ready]]:
    batches: list[list[Ready]] = []
    current: list[Ready] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if current and (current_bytes + size > max_bytes or len(current) >= max_items):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def _next_unread(queue: list[tuple[SegmentBook, int]], index: int) -> int:
    """The index of the first segment from ``index`` on with bytes left to read (``len(queue)``
    when there is none)."""
    while index < len(queue):
        book, size = queue[index]
        if book.read_pos < size:
            return index
        index += 1
    return index


def _text_of(item: Ready, encode: Callable[[Ready], int]) -> str:
    """The encoded text of ``item``, encoding it first if need be."""
    text = item.text
    if text is None:
        encode(item)
        text = item.text
        assert text is not None
    return text


def receipts_dir(qd: QueueDir) -> str:
    """Where the flusher confirms flush markers (one small file each)."""
    path = os.path.join(qd.root, "receipts")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return path


# --- process entry point ---------------------------------------------------------------------


def tune_gc() -> None:
    """For a process of our own that drains: the working set is many small acyclic dicts, which
    the default collector rescans over and over; collect rarely (it roughly halves the CPU).

    The young generation is only collected once 500,000 more container objects are alive than
    at the last collection. A drain's working set (the events within the grace window, the
    traces waiting for their root, the tombstone cache) stays below that, so in steady state
    no collection runs at all: with 100,000 a 50,000-event drain spent about 5 us per event in
    two collections of ~130 ms each, and found nothing to free (the flusher makes no cycles
    in its normal work; what it might make in rare paths is still collected eventually).
    """
    gc.freeze()
    gc.set_threshold(500_000, 50, 1000)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
    root = logging.getLogger("langfuse_dq")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m langfuse_dq.flusher --dir DIR [--exit-when-idle]``: the spawned flusher."""
    parser = argparse.ArgumentParser(prog="langfuse_dq.flusher")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--exit-when-idle", action="store_true")
    args = parser.parse_args(argv)
    os.umask(0o077)
    tune_gc()
    # The request on the wire is handled by a helper thread: every time its socket answers it
    # needs the GIL back, and with the default 5 ms switch interval it waits for this thread
    # to let go, several times per request (a drain's requests took ~25% longer).
    sys.setswitchinterval(0.001)
    _setup_logging()
    try:
        config = resolve_config(queue_dir=args.dir)
        qd = open_queue_dir(config.queue_dir)
    except (ValueError, TypeError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 3
    if not config.has_keys:
        log.error("cannot start: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are not set")
        return 3
    flusher = Flusher(config, qd)
    # Another flusher may be releasing the lock as we start; wait briefly before giving up.
    if not flusher.acquire(timeout=2.0):
        log.info("another flusher holds %s; exiting", qd.lock_path)
        return 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: flusher.request_stop())
    log.info(
        "flusher started (pid %d, dir %s, transport %s)", os.getpid(), qd.root, config.transport
    )
    try:
        result = flusher.run(exit_when_idle=args.exit_when_idle)
    finally:
        flusher.release()
    log.info(
        "flusher exiting: delivered %d, quarantined %d, dropped %d%s",
        result.delivered,
        result.quarantined,
        result.dropped,
        " (stopped by signal)" if result.stopped else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
