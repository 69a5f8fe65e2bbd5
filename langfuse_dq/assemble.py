"""Folding create/update events from all processes into complete observations (OTLP spans).

Langfuse v4 stores each OTLP span as its own row and does not deduplicate, so every
observation must be exported exactly once, complete. The assembler keeps, per trace, the
events not yet exported, and decides when something is ready:

- an observation that has its create event and has ended, once the *watermark* (the time up
  to which every journal segment has been read) is ``GRACE`` past its last event, so that an
  update written a moment later by another process is still folded in;
- an observation whose writer died before ``end()`` (or that stays open longer than
  ``max_open_seconds``), exported as it is with level WARNING and a status message saying why;
- the trace's root span (the trace itself: name, input, output, metadata), once none of its
  observations is pending and the trace has been quiet for ``TRACE_IDLE``;
- anything at or before a flush marker the watermark has passed, without waiting.

Folding is by event time: for each field the latest write wins, ``metadata`` is merged per
top-level key. Trace-level fields are copied onto every span of the trace.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .ids import root_observation_id
from .timeutil import ns_from_iso

GRACE_NS = 500_000_000
TRACE_IDLE_NS = 3_000_000_000
ORPHAN_WAIT_NS = 10_000_000_000
TOMBSTONE_CACHE = 50_000

_OBS_KINDS = ("span", "generation", "event")
#: Trace body fields that stay in a tombstone (input/output only ever go on the root).
_KEEP_AFTER_ROOT = (
    "name",
    "userId",
    "sessionId",
    "tags",
    "public",
    "metadata",
    "release",
    "version",
    "environment",
    "timestamp",
)


@dataclass
class SpanData:
    """One complete observation, ready to encode (transport-neutral)."""

    trace_id: str
    span_id: str
    parent_id: Optional[str]
    name: str
    kind: str
    start_ns: int
    end_ns: int
    fields: dict[str, Any]
    trace_fields: dict[str, Any]
    is_root: bool = False
    warning: Optional[str] = None


@dataclass
class Ready:
    """Something to send, with the queued events it accounts for."""

    events: list[dict[str, Any]]
    span: Optional[SpanData] = None
    envelope: Optional[dict[str, Any]] = None
    #: the encoded span or envelope, once computed (requests are assembled from these)
    text: Optional[str] = None

    @property
    def count(self) -> int:
        return len(self.events)


@dataclass
class Outcome:
    """What one ``collect()`` produced."""

    ready: list[Ready] = field(default_factory=list)
    #: events that can never be exported, by reason (counted as dropped)
    dropped: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _fold(base: dict[str, Any], body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key == "metadata" and isinstance(value, dict) and isinstance(base.get("metadata"), dict):
            merged = dict(base["metadata"])
            merged.update(value)
            base["metadata"] = merged
        else:
            base[key] = value


def _order(event: dict[str, Any]) -> tuple[int, int, str]:
    return (
        int(event.get("_t", 0)),
        0 if str(event.get("type", "")).endswith("-create") else 1,
        str(event.get("id")),
    )


def fold_trace(base: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Trace fields after applying ``events`` (trace-create envelopes) in time order."""
    fields = dict(base)
    for event in sorted(events, key=_order):
        body = event.get("body") or {}
        _fold(fields, {k: v for k, v in body.items() if k != "id"})
        if "release" not in fields and event.get("_r"):
            fields["release"] = event["_r"]
    return fields


def fold_observation(events: list[dict[str, Any]]) -> tuple[str, bool, dict[str, Any]]:
    """(kind, has a create event, folded body fields) of one observation's events."""
    kind = ""
    has_create = False
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for event in sorted(events, key=_order):
        if event.get("id") in seen:  # the same event queued twice (a quarantine retry)
            continue
        seen.add(str(event.get("id")))
        etype = str(event.get("type", ""))
        this_kind, _, action = etype.rpartition("-")
        if action == "create":
            if not has_create:
                kind = this_kind
            has_create = True
        elif not kind:
            kind = this_kind
        _fold(fields, event.get("body") or {})
        if event.get("_r") and "_release" not in fields:
            fields["_release"] = event["_r"]
    return kind or "span", has_create, fields


def _ns(value: Any, default: int) -> int:
    if isinstance(value, str):
        try:
            return ns_from_iso(value)
        except ValueError:
            return default
    return default


class TraceBuf:
    """The not-yet-exported events of one trace, and what is known of it."""

    __slots__ = (
        "child_end",
        "child_start",
        "dirty",
        "fields",
        "first_ns",
        "id",
        "last_ns",
        "needs_root",
        "obs",
        "root_done",
        "root_name",
        "trace_events",
    )

    def __init__(self, trace_id: str) -> None:
        self.id = trace_id
        self.trace_events: list[dict[str, Any]] = []
        self.obs: dict[str, list[dict[str, Any]]] = {}
        self.fields: dict[str, Any] = {}
        self.root_done = False
        self.needs_root = False
        self.root_name: Optional[str] = None
        self.child_start: Optional[int] = None
        self.child_end: Optional[int] = None
        self.first_ns = 0
        self.last_ns = 0
        self.dirty = False

    @property
    def pending(self) -> bool:
        """Holds events not yet exported."""
        return (
            bool(self.obs)
            or (bool(self.trace_events) and not self.root_done)
            or (self.needs_root and not self.root_done)
        )

    def pending_events(self) -> int:
        return len(self.trace_events) + sum(len(v) for v in self.obs.values())

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "f": self.fields,
            "root": self.root_done,
            "nr": self.needs_root,
            "rn": self.root_name,
            "cs": self.child_start,
            "ce": self.child_end,
            "t0": self.first_ns,
            "t1": self.last_ns,
            "pending": self.pending,
        }
        if self.trace_events:
            record["te"] = self.trace_events
        if self.obs:
            record["obs"] = self.obs
        return record

    @classmethod
    def from_record(cls, trace_id: str, record: dict[str, Any]) -> TraceBuf:
        buf = cls(trace_id)
        buf.fields = dict(record.get("f") or {})
        buf.root_done = bool(record.get("root"))
        buf.needs_root = bool(record.get("nr"))
        buf.root_name = record.get("rn")
        buf.child_start = record.get("cs")
        buf.child_end = record.get("ce")
        buf.first_ns = int(record.get("t0") or 0)
        buf.last_ns = int(record.get("t1") or 0)
        buf.trace_events = list(record.get("te") or [])
        buf.obs = {k: list(v) for k, v in (record.get("obs") or {}).items()}
        return buf


class Assembler:
    """In-memory working set of traces, backed by the flusher state for what is pending."""

    def __init__(
        self,
        load: Callable[[str], Optional[dict[str, Any]]],
        max_open_ns: int,
        writer_alive: Callable[[str], bool],
        grace_ns: int = GRACE_NS,
        trace_idle_ns: int = TRACE_IDLE_NS,
    ) -> None:
        self._load = load
        self.max_open_ns = max_open_ns
        self.writer_alive = writer_alive
        self.grace_ns = grace_ns
        self.trace_idle_ns = trace_idle_ns
        self.active: dict[str, TraceBuf] = {}
        self.tombstones: OrderedDict[str, TraceBuf] = OrderedDict()
        self.dirty: dict[str, TraceBuf] = {}

    # -- state -----------------------------------------------------------------------------

    def restore(self, trace_id: str, record: dict[str, Any]) -> None:
        """Load a pending trace from the state at start-up."""
        self.active[trace_id] = TraceBuf.from_record(trace_id, record)

    def _buf(self, trace_id: str) -> TraceBuf:
        buf = self.active.get(trace_id)
        if buf is not None:
            return buf
        buf = self.tombstones.pop(trace_id, None)
        if buf is None:
            record = self._load(trace_id)
            buf = TraceBuf.from_record(trace_id, record) if record else TraceBuf(trace_id)
        self.active[trace_id] = buf
        return buf

    def _touch(self, buf: TraceBuf) -> None:
        buf.dirty = True
        self.dirty[buf.id] = buf

    def pending_events(self) -> int:
        """Events held in the working set, not yet exported."""
        return sum(buf.pending_events() for buf in self.active.values())

    def oldest_pending_ns(self) -> Optional[int]:
        oldest: Optional[int] = None
        for buf in self.active.values():
            for events in [buf.trace_events, *buf.obs.values()]:
                for event in events:
                    t = int(event.get("_t", 0))
                    if oldest is None or t < oldest:
                        oldest = t
        return oldest

    def touch(self, trace_id: str) -> None:
        """Mark a trace for persisting at the next commit (its exported items were sent)."""
        buf = self.active.get(trace_id) or self.tombstones.get(trace_id)
        if buf is not None:
            self._touch(buf)

    def take_dirty(self, keep: Iterable[str] = ()) -> list[TraceBuf]:
        """Traces changed since the last call (to persist), moving finished ones aside.

        Traces in ``keep`` (items of theirs wait to be sent) stay in the working set.
        """
        bufs = list(self.dirty.values())
        self.dirty.clear()
        held = set(keep)
        for buf in bufs:
            buf.dirty = False
            if not buf.pending and buf.id not in held and self.active.get(buf.id) is buf:
                del self.active[buf.id]
                self.tombstones[buf.id] = buf
                if len(self.tombstones) > TOMBSTONE_CACHE:
                    self.tombstones.popitem(last=False)
        return bufs

    # -- intake ----------------------------------------------------------------------------

    def add(self, event: dict[str, Any]) -> None:
        """Fold one queued event (not a score) into its trace."""
        etype = str(event.get("type", ""))
        body = event.get("body") or {}
        t = int(event.get("_t", 0))
        if etype == "trace-create":
            trace_id = str(body.get("id"))
            buf = self._buf(trace_id)
            buf.trace_events.append(event)
            buf.needs_root = True
        else:
            trace_id = str(body.get("traceId"))
            buf = self._buf(trace_id)
            obs_id = str(body.get("id"))
            buf.obs.setdefault(obs_id, []).append(event)
            if etype.endswith("-create") and not body.get("parentObservationId"):
                buf.needs_root = True
                if buf.root_name is None and isinstance(body.get("name"), str):
                    buf.root_name = body["name"]
        if not buf.first_ns or t < buf.first_ns:
            buf.first_ns = t
        buf.last_ns = max(buf.last_ns, t)
        self._touch(buf)

    # -- decisions -------------------------------------------------------------------------

    def collect(self, watermark_ns: int, now_ns: int, forced_ns: int) -> Outcome:
        """Everything exportable now.

        ``watermark_ns``: every journal line stamped before it has been read.
        ``forced_ns``: events stamped at or before it are exported without waiting (a flush
        marker the watermark has passed); 0 for none.
        """
        out = Outcome()
        for buf in list(self.active.values()):
            if buf.obs:
                self._collect_observations(buf, watermark_ns, now_ns, forced_ns, out)
            if buf.root_done and buf.trace_events:
                # The root went out already; later trace fields still reach later spans.
                buf.fields = fold_trace(buf.fields, buf.trace_events)
                self._strip_io(buf)
                out.dropped.setdefault("late_update", []).extend(buf.trace_events)
                buf.trace_events = []
                self._touch(buf)
            if buf.needs_root and not buf.root_done and not buf.obs:
                quiet = watermark_ns >= buf.last_ns + self.trace_idle_ns
                if quiet or (forced_ns and buf.last_ns <= forced_ns):
                    out.ready.append(self._root(buf))
        return out

    def _collect_observations(
        self, buf: TraceBuf, watermark_ns: int, now_ns: int, forced_ns: int, out: Outcome
    ) -> None:
        for obs_id, events in list(buf.obs.items()):
            kind, has_create, fields = fold_observation(events)
            last = max(int(e.get("_t", 0)) for e in events)
            settled = watermark_ns >= last + self.grace_ns or (forced_ns and last <= forced_ns)
            ended = kind == "event" or "endTime" in fields
            warning: Optional[str] = None
            if not has_create:
                if watermark_ns >= last + ORPHAN_WAIT_NS:
                    out.dropped.setdefault("orphan_update", []).extend(events)
                    del buf.obs[obs_id]
                    self._touch(buf)
                continue
            if not ended:
                start = _ns(fields.get("startTime"), last)
                create = next(
                    e for e in sorted(events, key=_order) if str(e.get("type")).endswith("-create")
                )
                writer = str(create.get("_w", ""))
                if settled and writer and not self.writer_alive(writer):
                    warning = (
                        f"langfuse-dq: the process that recorded this observation (pid "
                        f"{create.get('_p')}) exited before end() was called; exported as it was"
                    )
                elif now_ns - start > self.max_open_ns:
                    warning = (
                        f"langfuse-dq: still open after {self.max_open_ns // 1_000_000_000} s "
                        "(max_open_seconds); exported as it was"
                    )
                else:
                    continue
                fields["endTime_ns"] = max(last, start)
            elif not settled:
                continue
            out.ready.append(self._observation(buf, obs_id, kind, fields, events, warning))
            del buf.obs[obs_id]
            self._touch(buf)

    def _observation(
        self,
        buf: TraceBuf,
        obs_id: str,
        kind: str,
        fields: dict[str, Any],
        events: list[dict[str, Any]],
        warning: Optional[str],
    ) -> Ready:
        first_t = min(int(e.get("_t", 0)) for e in events)
        start = _ns(fields.get("startTime"), first_t)
        if kind == "event":
            end = start
        elif "endTime_ns" in fields:
            end = int(fields.pop("endTime_ns"))
        else:
            end = _ns(fields.get("endTime"), start)
        end = max(end, start)
        parent = fields.get("parentObservationId")
        if not parent:
            parent = root_observation_id(buf.id)
            buf.needs_root = True
        buf.child_start = start if buf.child_start is None else min(buf.child_start, start)
        buf.child_end = end if buf.child_end is None else max(buf.child_end, end)
        span = SpanData(
            trace_id=buf.id,
            span_id=obs_id,
            parent_id=parent,
            name=str(fields.get("name") or kind),
            kind=kind if kind in _OBS_KINDS else "span",
            start_ns=start,
            end_ns=end,
            fields=fields,
            trace_fields=fold_trace(buf.fields, buf.trace_events),
            warning=warning,
        )
        return Ready(events=list(events), span=span)

    def _root(self, buf: TraceBuf) -> Ready:
        fields = fold_trace(buf.fields, buf.trace_events)
        trace_ts = _ns(fields.get("timestamp"), buf.first_ns)
        starts = [t for t in (trace_ts, buf.child_start) if t]
        start = min(starts) if starts else buf.first_ns
        end = max(t for t in (buf.child_end or 0, buf.last_ns, start))
        span_fields: dict[str, Any] = {}
        for key in ("input", "output"):
            if key in fields:
                span_fields[key] = fields[key]
        if fields.get("environment"):
            span_fields["environment"] = fields["environment"]
        name = fields.get("name") or buf.root_name or "trace"
        span = SpanData(
            trace_id=buf.id,
            span_id=root_observation_id(buf.id),
            parent_id=None,
            name=str(name),
            kind="span",
            start_ns=start,
            end_ns=end,
            fields=span_fields,
            trace_fields=fields,
            is_root=True,
        )
        events = list(buf.trace_events)
        buf.fields = fields
        self._strip_io(buf)
        buf.trace_events = []
        buf.root_done = True
        self._touch(buf)
        return Ready(events=events, span=span)

    @staticmethod
    def _strip_io(buf: TraceBuf) -> None:
        buf.fields = {k: v for k, v in buf.fields.items() if k in _KEEP_AFTER_ROOT}
