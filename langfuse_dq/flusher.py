"""The flusher: the one process that drains a queue directory into Langfuse.

It holds ``flusher.lock`` (a filelock) for its whole life, so at most one drains a directory;
a second one gives up at once. Its loop:

1. **intake**: read new complete lines from every journal segment (from the committed cursor);
   fold observation events into the :class:`~langfuse_dq.assemble.Assembler`, queue scores
   (and, with ``transport="ingestion"``, every envelope) for sending;
2. **collect** what is complete (see assemble.py), once ``batch_size`` events are ready or the
   oldest has waited ``flush_interval``;
3. **deliver**: send in requests split by bytes and count, retrying what is retryable with
   backoff until it succeeds (no retry budget drops data), bisecting rejected batches to the
   bad events and quarantining those;
4. **commit**, in one state transaction: cursors, traces still being assembled, counters and
   pending flush markers. Only then are fully consumed segments deleted.

A flusher killed at any point loses nothing: the next one starts from the last commit. What was
sent after that commit is sent again (counted as ``duplicate_risk``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import filelock

from .assemble import Assembler, Ready
from .config import Config, resolve_config
from .journal import list_segments, read_lines, sealed_segments
from .proc import pid_alive, process_start_ticks
from .quarantine import write_batch
from .queuedir import QueueDir, open_queue_dir, write_file_atomic
from .state import TRACE_TTL, FlusherState
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

#: Lines stamped this long before the moment we found a segment's end may still be written.
MARGIN_NS = 250_000_000
POLL_INTERVAL = 0.05
MAX_INTAKE_BYTES = 4 << 20
MIN_INTAKE_BYTES = 64 << 10
MAX_REQUEST_BYTES = 3_500_000
IDLE_EXIT_SECONDS = float(os.environ.get("LANGFUSE_DQ_IDLE_EXIT", "30"))
RETRY_BASE = float(os.environ.get("LANGFUSE_DQ_RETRY_BASE", "0.5"))
RETRY_CAP = float(os.environ.get("LANGFUSE_DQ_RETRY_CAP", "30"))
AUTH_RETRY_BASE = float(os.environ.get("LANGFUSE_DQ_AUTH_RETRY_BASE", "15"))
AUTH_RETRY_CAP = float(os.environ.get("LANGFUSE_DQ_AUTH_RETRY_CAP", "300"))
HEARTBEAT_SECONDS = 1.0
RECEIPT_TTL = 3600.0
SCORE_TYPES = ("score-create",)
OBSERVATION_TYPES = (
    "trace-create",
    "span-create",
    "span-update",
    "generation-create",
    "generation-update",
    "event-create",
)


class Interrupted(Exception):
    """A stop was requested while delivering; nothing is committed."""


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


class Flusher:
    """Drains one queue directory. Use :meth:`acquire` first; one per process."""

    def __init__(self, config: Config, qd: QueueDir) -> None:
        self.config = config
        self.qd = qd
        self.lock = filelock.FileLock(qd.lock_path, thread_local=False)
        self.stop_event = threading.Event()
        self.state: Optional[FlusherState] = None
        self.sender = HttpSender(config)
        self.encoder = OtlpEncoder(config.public_key)
        self.otlp = config.transport == "otlp"
        self.assembler = Assembler(
            load=self._load_trace,
            max_open_ns=int(config.max_open_seconds * 1e9),
            writer_alive=self._writer_alive,
        )
        self.cursors: dict[str, int] = {}
        self.read_pos: dict[str, int] = {}
        self.seg_last_t: dict[str, int] = {}
        self.markers: list[Marker] = []
        self.outbox: list[Ready] = []
        self.outbox_since = 0.0
        #: envelopes whose delivery a stop interrupted: persisted at commit, sent next run
        self.outbox_persisted = 0
        self._open_items: dict[int, Ready] = {}
        self.deadline: Optional[float] = None
        self.deltas: dict[str, int] = {}
        self.inflight = 0
        self.uncommitted = False
        self.watermark = 0
        self.last_commit = time.monotonic()
        self.last_activity = time.monotonic()
        self.last_heartbeat = 0.0
        self.alive_cache: dict[str, bool] = {}
        self.result = RunResult()
        self.fail_on_auth = False
        self.auth_blocked: Optional[str] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the flusher lock; False when another process holds it."""
        try:
            self.lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        self.state = FlusherState(self.qd)
        self._load()
        self._heartbeat(force=True)
        return True

    def release(self) -> None:
        """Commit what can be committed, then let go of the lock."""
        try:
            if self.state is not None:
                self.commit()
                try:
                    os.utime(self.qd.heartbeat_path, (0, 0))
                except OSError:
                    pass
                self.state.close()
                self.state = None
        finally:
            if self.lock.is_locked:
                self.lock.release()
            self.sender.close()

    def _load(self) -> None:
        assert self.state is not None
        st = self.state
        self.cursors = st.cursors()
        self.read_pos = dict(self.cursors)
        for trace_id in st.get("pending", []) or []:
            record = st.get_trace(str(trace_id))
            if record:
                self.assembler.restore(str(trace_id), record)
        self.markers = [
            Marker(str(m["id"]), int(m["t"]), int(m.get("q", 0)), int(m.get("d", 0)))
            for m in st.get("markers", []) or []
            if isinstance(m, dict) and "id" in m and "t" in m
        ]
        for event in st.get("outbox", []) or []:
            if isinstance(event, dict):
                self._to_outbox(Ready(events=[event], envelope=wire_envelope(event)))
        self.outbox_persisted = len(self.outbox)
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

    def request_stop(self) -> None:
        """Stop soon: between requests, never committing a half-delivered round."""
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
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._heartbeat()
                # Do not read further while a lot waits to be sent: memory stays flat.
                got = self.intake() if len(self.outbox) < 4 * self._max_items() else 0
                forced = self._forced_time()
                draining = until_marker is not None or until_drained
                self._collect(forced)
                sent = False
                if self.outbox and self._due(forced, draining):
                    self.deliver()
                    sent = True
                if sent or (
                    self.uncommitted
                    and (
                        draining
                        or time.monotonic() - self.last_commit >= self.config.flush_interval
                    )
                ):
                    self.commit()
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
                if not got and not sent:
                    self.stop_event.wait(POLL_INTERVAL)
        except Interrupted:
            self.result.stopped = True
        except AuthFailure as exc:
            self.result.auth_error = str(exc)
        finally:
            self.deadline = None
        return self.result

    def _due(self, forced: int, draining: bool) -> bool:
        count = sum(r.count for r in self.outbox)
        if count >= self.config.batch_size or forced or draining:
            return True
        return time.monotonic() - self.outbox_since >= self.config.flush_interval

    def _idle(self) -> bool:
        if self.outbox or self.uncommitted or self.assembler.active or self.markers:
            return False
        if time.monotonic() - self.last_activity < IDLE_EXIT_SECONDS:
            return False
        # Last look before leaving: anything written meanwhile keeps us here.
        return not any(
            size > self.read_pos.get(seg.name, 0) for seg, size in list_segments(self.qd.journal)
        )

    def _drained(self) -> bool:
        return not (self.outbox or self.uncommitted or self.assembler.active) and not any(
            size > self.read_pos.get(seg.name, 0) for seg, size in list_segments(self.qd.journal)
        )

    # -- intake ------------------------------------------------------------------------------

    def intake(self) -> int:
        """Read new journal lines; returns how many were read."""
        scan_ns = now_ns()
        segments = list_segments(self.qd.journal)
        self.alive_cache = {}
        sealed = sealed_segments(segments)
        # About two requests' worth per round: each round commits, so a crash re-sends little.
        budget = min(MAX_INTAKE_BYTES, max(MIN_INTAKE_BYTES, self.config.batch_size * 2048))
        count = 0
        marks: list[int] = []
        present = set()
        for seg, size in segments:
            present.add(seg.name)
            pos = self.read_pos.get(seg.name, 0)
            if pos > size:
                log.error("journal segment %s is shorter than its cursor; rereading it", seg.name)
                self._add("corrupt_segments", 1)
                pos = 0
            if pos < size and budget > 0:
                lines, new_pos = read_lines(
                    os.path.join(self.qd.journal, seg.name), pos, min(budget, size - pos)
                )
                budget -= new_pos - pos
                for _offset, line in lines:
                    self._ingest(seg.writer, seg.name, line)
                count += len(lines)
                if new_pos != pos:
                    self.read_pos[seg.name] = new_pos
                    self.uncommitted = True
                pos = new_pos
            at_end = pos >= size
            if seg.name in sealed:
                if not at_end:
                    tail, _ = read_lines(os.path.join(self.qd.journal, seg.name), pos, 1)
                    if not tail:
                        # The writer died mid-append: an unterminated last line, never acked.
                        self._add("torn_lines", 1)
                        self.read_pos[seg.name] = size
                        self.uncommitted = True
                    else:
                        marks.append(self.seg_last_t.get(seg.name, scan_ns) - MARGIN_NS)
                continue
            if at_end:
                marks.append(scan_ns - MARGIN_NS)
            else:
                marks.append(self.seg_last_t.get(seg.name, scan_ns) - MARGIN_NS)
        for name in list(self.read_pos):
            if name not in present:
                self.read_pos.pop(name, None)
                self.seg_last_t.pop(name, None)
                self.uncommitted = True
        self.watermark = max(self.watermark, min(marks) if marks else scan_ns - MARGIN_NS)
        return count

    def _ingest(self, writer: str, segment: str, line: bytes) -> None:
        if line.startswith(b'{"_c":'):
            self._control(line)
            return
        try:
            event = json.loads(line)
        except ValueError:
            self._add("corrupt_lines", 1)
            return
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("type"), str)
            or not isinstance(event.get("body"), dict)
        ):
            self._add("corrupt_lines", 1)
            return
        t = event.get("_t")
        if not isinstance(t, int):
            t = now_ns()
            event["_t"] = t
        if t > self.seg_last_t.get(segment, 0):
            self.seg_last_t[segment] = t
        event["_w"] = writer
        etype = event["type"]
        if not self.otlp or etype in SCORE_TYPES:
            self._to_outbox(Ready(events=[event], envelope=wire_envelope(event)))
        elif etype in OBSERVATION_TYPES:
            self.assembler.add(event)
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
            self.markers.append(Marker(record["id"], int(record.get("t") or now_ns())))

    def _to_outbox(self, item: Ready) -> None:
        if not self.outbox:
            self.outbox_since = time.monotonic()
        self.outbox.append(item)

    def _add(self, name: str, amount: int) -> None:
        if amount:
            self.deltas[name] = self.deltas.get(name, 0) + amount
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

    def _load_trace(self, trace_id: str) -> Optional[dict[str, Any]]:
        return self.state.get_trace(trace_id) if self.state is not None else None

    # -- deciding ----------------------------------------------------------------------------

    def _forced_time(self) -> int:
        covered = [m.t for m in self.markers if self.watermark > m.t]
        return max(covered) if covered else 0

    def _collect(self, forced: int) -> None:
        if not self.otlp:
            return
        outcome = self.assembler.collect(self.watermark, now_ns(), forced)
        for item in outcome.ready:
            self._to_outbox(item)
        for reason, events in outcome.dropped.items():
            if events:
                self._add("dropped:" + reason, len(events))
                log.warning(
                    "%d events dropped (%s): they arrived after their observation or trace was "
                    "exported, or without its create event",
                    len(events),
                    reason,
                )

    def _settle_markers(self) -> None:
        if not self.markers or self.uncommitted or self.outbox:
            return
        oldest = self.assembler.oldest_pending_ns() if self.assembler.active else None
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
            write_file_atomic(
                self._receipt_path(marker.id), json.dumps(receipt).encode(), fsync=False
            )
        self.markers = [m for m in self.markers if m not in done]
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

    def deliver(self) -> None:
        """Send the oldest part of the outbox (about one request); each item sent ends
        delivered or quarantined. The commit that follows records it, so a crash re-sends at
        most one round.

        If a stop (signal, deadline, an auth error under ``flush``) interrupts the round, the
        items not yet delivered go back to the outbox; the commit keeps them (see
        :meth:`commit`), so a graceful stop never causes a duplicate.
        """
        limit = self._max_items()
        taken = 0
        count = 0
        for item in self.outbox:
            if count >= limit and taken:
                break
            taken += 1
            count += item.count
        items, self.outbox = self.outbox[:taken], self.outbox[taken:]
        if self.outbox:
            self.outbox_since = time.monotonic()
        self._open_items = {id(i): i for i in items}
        spans = [i for i in items if i.span is not None]
        envelopes = [i for i in items if i.envelope is not None]
        try:
            budget = self._max_items()
            for batch in _split(
                spans, self._span_text, MAX_REQUEST_BYTES - self.encoder.overhead, budget
            ):
                self._send(batch, self._send_otlp_once, "otlp", OTLP_PATH)
            for batch in _split(envelopes, self._envelope_text, MAX_BATCH_BYTES, budget):
                self._send(batch, self._send_ingestion_once, "ingestion", INGESTION_PATH)
        except (Interrupted, AuthFailure):
            leftover = [i for i in items if id(i) in self._open_items]
            self.outbox[:0] = leftover
            if leftover:
                log.info("%d items not delivered yet; kept for the next run", len(leftover))
            raise
        finally:
            for item in items:
                if item.span is not None:
                    self.assembler.touch(item.span.trace_id)
            self._open_items = {}

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

    def _send(self, batch: list[Ready], once: Any, transport: str, endpoint: str) -> None:
        """Deliver ``batch`` whatever it takes: retry, back off, split, bisect, quarantine."""
        pending = [batch]
        backoff = Backoff(RETRY_BASE, RETRY_CAP)
        auth_backoff = Backoff(AUTH_RETRY_BASE, AUTH_RETRY_CAP)
        first_failure = time.time()
        attempts = 0
        maybe_duplicated = 0
        assert self.state is not None
        while pending:
            if self.stop_event.is_set():
                raise Interrupted()
            current = pending.pop()
            self._mark_inflight(current)
            verdict, rest = once(current)
            attempts += 1
            count = sum(i.count for i in current)
            if verdict.action == "ok":
                backoff.reset()
                auth_backoff.reset()
                if maybe_duplicated:
                    self._add("duplicate_risk", maybe_duplicated)
                    maybe_duplicated = 0
                self.auth_blocked = None
                self.state.record_success()
                if rest:  # some events of a 207 are to be retried
                    self._add("retried", sum(i.count for i in rest))
                    pending.append(rest)
                    self._sleep(backoff.next(verdict.retry_after))
                continue
            self.state.record_error(verdict.message, verdict.status)
            if verdict.action == "retry":
                if verdict.maybe_sent:
                    maybe_duplicated = max(maybe_duplicated, count)
                self._add("retried", count)
                log.warning("%s: will retry %d events: %s", transport, count, verdict.message)
                pending.append(current)
                self._sleep(backoff.next(verdict.retry_after))
            elif verdict.action in ("auth", "config"):
                self.auth_blocked = verdict.message
                self.state.set(
                    "auth_error",
                    {"at": time.time(), "message": verdict.message, "status": verdict.status},
                )
                log.error(
                    "%s: %s; keeping %d events, backing off", transport, verdict.message, count
                )
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
                    transport,
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
            step = min(remaining, HEARTBEAT_SECONDS)
            if self.deadline is not None:
                step = min(step, max(self.deadline - now, 0.0))
            if self.stop_event.wait(step):
                raise Interrupted()

    def _send_otlp_once(self, batch: list[Ready]) -> tuple[Verdict, list[Ready]]:
        texts = []
        for item in batch:
            self._span_text(item)
            texts.append(str(item.text))
        body = gzip.compress(self.encoder.request_body(texts), compresslevel=5)
        try:
            response = self.sender.post(OTLP_PATH, body, "application/json", gzip=True)
        except TransportError as exc:
            return Verdict("retry", None, str(exc), maybe_sent=exc.maybe_sent), []
        verdict = classify(response)
        if verdict.action == "ok":
            self._delivered(batch)
        return verdict, []

    def _send_ingestion_once(self, batch: list[Ready]) -> tuple[Verdict, list[Ready]]:
        texts = []
        for item in batch:
            self._envelope_text(item)
            texts.append(str(item.text))
        try:
            response = self.sender.post(INGESTION_PATH, request_body(texts), "application/json")
        except TransportError as exc:
            return Verdict("retry", None, str(exc), maybe_sent=exc.maybe_sent), []
        verdict = classify(response)
        if verdict.action != "ok":
            return verdict, []
        by_id = {str(item.envelope["id"]): item for item in batch if item.envelope is not None}
        result = parse_result(response.status, response.text, list(by_id))
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
                statuses[0] if len(statuses) == 1 else response.status,
                "ingestion",
                INGESTION_PATH,
                1,
                time.time(),
                errors=errors,
                response=response.text,
            )
        return verdict, [by_id[i] for i in result.retry]

    def _delivered(self, items: list[Ready]) -> None:
        for item in items:
            self._open_items.pop(id(item), None)
        self._add("delivered", sum(i.count for i in items))

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

    def commit(self) -> None:
        """Persist the round: cursors, traces, counters, markers; then delete used segments."""
        st = self.state
        assert st is not None
        # Spans collected but not sent yet are still pending: their events go back into their
        # trace's record, so the cursor can move past them without losing them.
        held: dict[str, list[Ready]] = {}
        envelopes: list[dict[str, Any]] = []
        for item in self.outbox:
            if item.span is not None:
                held.setdefault(item.span.trace_id, []).append(item)
            else:
                envelopes.extend(item.events)
        dirty = self.assembler.take_dirty(keep=held.keys())
        with st.transact():
            st.set("cursors", self.read_pos)
            for buf in dirty:
                record = buf.to_record()
                if buf.id in held:
                    _overlay(record, held[buf.id])
                if record["pending"]:
                    st.put_trace(buf.id, record, expire=None)
                elif buf.root_done or buf.fields:
                    st.put_trace(buf.id, record, expire=TRACE_TTL)
                else:
                    st.delete_trace(buf.id)
            st.set("pending", sorted(self.assembler.active))
            st.add_counters(self.deltas)
            st.set("markers", [self._marker_record(m) for m in self.markers])
            if envelopes or self.outbox_persisted:
                st.set("outbox", envelopes)
                self.outbox_persisted = len(envelopes)
            st.delete("inflight")
        if self.deltas.get("delivered"):
            self.result.delivered += self.deltas["delivered"]
        self.result.quarantined += self.deltas.get("quarantined", 0)
        self.result.dropped += sum(v for k, v in self.deltas.items() if k.startswith("dropped:"))
        self.deltas = {}
        self.inflight = 0
        self.uncommitted = False
        self.cursors = dict(self.read_pos)
        self.last_commit = time.monotonic()
        self._delete_consumed()

    def _delete_consumed(self) -> None:
        segments = list_segments(self.qd.journal)
        sealed = sealed_segments(segments)
        removed = False
        for seg, size in segments:
            if seg.name in sealed and self.cursors.get(seg.name, -1) >= size:
                try:
                    os.unlink(os.path.join(self.qd.journal, seg.name))
                except FileNotFoundError:
                    pass
                self.read_pos.pop(seg.name, None)
                self.cursors.pop(seg.name, None)
                self.seg_last_t.pop(seg.name, None)
                removed = True
        if removed:
            assert self.state is not None
            self.state.set("cursors", self.read_pos)
        self._clean_receipts()

    _receipts_cleaned = 0.0

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


def _overlay(record: dict[str, Any], items: list[Ready]) -> None:
    """Add the events of collected-but-unsent spans back into a trace record."""
    obs: dict[str, list[dict[str, Any]]] = dict(record.get("obs") or {})
    for item in items:
        assert item.span is not None
        if item.span.is_root:
            record["te"] = list(record.get("te") or []) + item.events
            record["root"] = False
        else:
            obs[item.span.span_id] = list(obs.get(item.span.span_id, [])) + item.events
    if obs:
        record["obs"] = obs
    record["pending"] = True


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


def receipts_dir(qd: QueueDir) -> str:
    """Where the flusher confirms flush markers (one small file each)."""
    path = os.path.join(qd.root, "receipts")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return path


# --- process entry point ---------------------------------------------------------------------


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
