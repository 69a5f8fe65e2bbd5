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

Work is incremental: a trace is looked at again only when an event arrives for it, when a
timer it asked for comes due, or (about once a second) when it has an observation left open.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .ids import root_observation_id
from .timeutil import ns_from_iso

GRACE_NS = 500_000_000
TRACE_IDLE_NS = 3_000_000_000
ORPHAN_WAIT_NS = 10_000_000_000
OPEN_CHECK_NS = 1_000_000_000
TOMBSTONE_CACHE = 50_000

ROOT_NONE, ROOT_EXPORTED, ROOT_QUARANTINED = 0, 1, 2

_OBS_KINDS = ("span", "generation", "event")
#: Trace body fields a tombstone keeps (input/output only ever go on the root).
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
    """Apply ``body`` over ``base``: each field is replaced, ``metadata`` merged per key."""
    old_metadata = base.get("metadata")
    base.update(body)
    if isinstance(old_metadata, dict):
        metadata = body.get("metadata")
        if isinstance(metadata, dict):
            merged = dict(old_metadata)
            merged.update(metadata)
            base["metadata"] = merged


def _order(event: dict[str, Any]) -> tuple[int, int, str]:
    kind = 0 if str(event.get("type", "")).endswith("-create") else 1
    return (int(event.get("_t", 0)), kind, str(event.get("id")))


def _in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` sorted by :func:`_order`; most often they already are, by time alone."""
    previous = -1
    for event in events:
        t = event.get("_t", 0)
        if not isinstance(t, int) or t <= previous:
            return sorted(events, key=_order)
        previous = t
    return events


def fold_trace(base: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Trace fields after applying ``events`` (trace-create envelopes) in time order."""
    fields = dict(base)
    for event in _in_order(events):
        body = event.get("body") or {}
        if "id" in body:
            body = dict(body)
            del body["id"]
        _fold(fields, body)
        if "release" not in fields and event.get("_r"):
            fields["release"] = event["_r"]
    return fields


def fold_observation(events: list[dict[str, Any]]) -> tuple[str, bool, dict[str, Any]]:
    """(kind, has a create event, folded body fields) of one observation's events."""
    if len(events) == 1:
        event = events[0]
        this_kind, _, action = str(event.get("type", "")).rpartition("-")
        fields = dict(event.get("body") or {})
        if event.get("_r"):
            fields["_release"] = event["_r"]
        return this_kind or "span", action == "create", fields
    if len(events) == 2:
        first, second = events
        first_t, second_t = first.get("_t", 0), second.get("_t", 0)
        first_type = first.get("type", "")
        if (
            isinstance(first_t, int)
            and isinstance(second_t, int)
            and first_t < second_t
            and isinstance(first_type, str)
            and first_type.endswith("-create")
            and len(first_type) > len("-create")
            and str(first.get("id")) != str(second.get("id"))
        ):
            # A create and a later update (the usual pair): what the loop below does for them.
            fields = dict(first.get("body") or {})
            if first.get("_r") and "_release" not in fields:
                fields["_release"] = first["_r"]
            _fold(fields, second.get("body") or {})
            if second.get("_r") and "_release" not in fields:
                fields["_release"] = second["_r"]
            return first_type[: -len("-create")], True, fields
    kind = ""
    has_create = False
    fields = {}
    seen: set[str] = set()
    for event in _in_order(events):
        event_id = str(event.get("id"))
        if event_id in seen:  # the same event queued twice (a quarantine retry)
            continue
        seen.add(event_id)
        this_kind, _, action = str(event.get("type", "")).rpartition("-")
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


def _settling(events: list[dict[str, Any]]) -> bool:
    """Do these events hold a create and an end? (Such an observation only waits for time.)"""
    created = ended = False
    for event in events:
        if str(event.get("type", "")).endswith("-create"):
            created = True
        if "endTime" in (event.get("body") or {}):
            ended = True
    return created and ended


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
        "checked",
        "child_end",
        "child_start",
        "fields",
        "first_ns",
        "folded",
        "id",
        "last_ns",
        "needs_root",
        "obs",
        "open_obs",
        "root",
        "root_id",
        "root_name",
        "root_sent",
        "trace_events",
    )

    def __init__(self, trace_id: str) -> None:
        self.id = trace_id
        self.trace_events: list[dict[str, Any]] = []
        self.obs: dict[str, list[dict[str, Any]]] = {}
        self.fields: dict[str, Any] = {}
        #: root span state in memory: ROOT_NONE, ROOT_EXPORTED (collected) or ROOT_QUARANTINED
        self.root = ROOT_NONE
        #: the root reached a final state on the server side (delivered or quarantined)
        self.root_sent = ROOT_NONE
        self.needs_root = False
        self.root_name: Optional[str] = None
        self.root_id = root_observation_id(trace_id)
        self.child_start: Optional[int] = None
        self.child_end: Optional[int] = None
        self.first_ns = 0
        self.last_ns = 0
        self.open_obs = False
        #: its tombstone (if any) was looked up in the state
        self.checked = False
        #: fields folded with the pending trace events (shared by the spans exported now)
        self.folded: Optional[dict[str, Any]] = None

    def trace_fields(self) -> dict[str, Any]:
        """The trace's fields with every trace event known so far applied (cached)."""
        if not self.trace_events:
            return self.fields
        if self.folded is None:
            self.folded = fold_trace(self.fields, self.trace_events)
        return self.folded

    @property
    def pending(self) -> bool:
        """Holds events not yet exported (or a root still to export)."""
        return (
            bool(self.obs)
            or (bool(self.trace_events) and self.root != ROOT_EXPORTED)
            or (self.needs_root and self.root == ROOT_NONE)
        )

    def pending_events(self) -> int:
        return len(self.trace_events) + sum(len(v) for v in self.obs.values())

    def to_record(self) -> dict[str, Any]:
        """The persisted tombstone: what the root span became and the trace's fields."""
        return {
            "f": {k: v for k, v in self.fields.items() if k in _KEEP_AFTER_ROOT},
            "root": self.root_sent,
            "nr": self.needs_root,
            "rn": self.root_name,
            "cs": self.child_start,
            "ce": self.child_end,
            "t0": self.first_ns,
            "t1": self.last_ns,
        }

    def merge_record(self, record: dict[str, Any]) -> None:
        """Take in the tombstone of this trace (what an earlier run settled)."""
        self.checked = True
        fields = dict(record.get("f") or {})
        fields.update(self.fields)
        self.fields = fields
        self.folded = None
        root = record.get("root")
        self.root_sent = int(root) if isinstance(root, (int, bool)) else ROOT_NONE
        if self.root == ROOT_NONE:
            self.root = self.root_sent
        self.needs_root = self.needs_root or bool(record.get("nr"))
        if self.root_name is None:
            self.root_name = record.get("rn")
        for attr, key, pick in (("child_start", "cs", min), ("child_end", "ce", max)):
            theirs = record.get(key)
            if isinstance(theirs, int):
                ours = getattr(self, attr)
                setattr(self, attr, theirs if ours is None else pick(ours, theirs))
        t0, t1 = record.get("t0"), record.get("t1")
        if isinstance(t0, int) and t0 and (not self.first_ns or t0 < self.first_ns):
            self.first_ns = t0
        if isinstance(t1, int) and t1 > self.last_ns:
            self.last_ns = t1


class Assembler:
    """In-memory working set of traces. Every pending event stays durable in the journal;
    the state only keeps tombstones of traces whose root span was settled."""

    def __init__(
        self,
        load: Callable[[list[str]], dict[str, dict[str, Any]]],
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
        #: traces whose persisted record must be rewritten at the next commit
        self.to_persist: dict[str, TraceBuf] = {}
        self._changed: set[str] = set()
        self._deferred: list[str] = []
        self._timers: list[tuple[int, str]] = []
        self._last_open_scan = 0
        self.held = 0

    # -- state -----------------------------------------------------------------------------

    def _buf(self, trace_id: str) -> TraceBuf:
        buf = self.active.get(trace_id)
        if buf is not None:
            return buf
        buf = self.tombstones.pop(trace_id, None)
        if buf is None:
            buf = TraceBuf(trace_id)  # its tombstone, if any, is looked up before export
        self.active[trace_id] = buf
        return buf

    def _check(self, trace_ids: list[str]) -> None:
        """Look up the tombstones of traces not yet checked, many at a time."""
        unchecked = [t for t in trace_ids if t in self.active and not self.active[t].checked]
        if not unchecked:
            return
        records = self._load(unchecked)
        for trace_id in unchecked:
            buf = self.active[trace_id]
            record = records.get(trace_id)
            if record is not None:
                buf.merge_record(record)
            buf.checked = True

    def persist(self, trace_id: str) -> None:
        """Have this trace's record rewritten at the next commit."""
        buf = self.active.get(trace_id) or self.tombstones.get(trace_id)
        if buf is not None:
            self.to_persist[trace_id] = buf

    def pending_events(self) -> int:
        """Events held in the working set, not yet exported."""
        return self.held

    def oldest_pending_ns(self) -> Optional[int]:
        oldest: Optional[int] = None
        for buf in self.active.values():
            for events in [buf.trace_events, *buf.obs.values()]:
                for event in events:
                    t = int(event.get("_t", 0))
                    if oldest is None or t < oldest:
                        oldest = t
        return oldest

    def take_persist(self) -> list[TraceBuf]:
        """Records to write at this commit; finished traces move to the tombstone cache."""
        bufs = list(self.to_persist.values())
        self.to_persist.clear()
        return bufs

    def retire(self, trace_id: str) -> None:
        """Move a trace with nothing pending out of the working set (into the small cache)."""
        buf = self.active.get(trace_id)
        if buf is not None and not buf.pending:
            del self.active[trace_id]
            if buf.root_sent == ROOT_EXPORTED and buf.root == ROOT_EXPORTED:
                # Its root was delivered and is never exported again: keep only what its
                # tombstone keeps (what later spans of the trace still use), as a restart
                # would. The cache holds up to TOMBSTONE_CACHE of these; input, output and
                # emptied containers made most of their memory.
                buf.fields = {k: v for k, v in buf.fields.items() if k in _KEEP_AFTER_ROOT}
                buf.folded = None
                buf.obs = {}  # empty (not pending), but a dict keeps its table once grown
            self.tombstones[trace_id] = buf
            if len(self.tombstones) > TOMBSTONE_CACHE:
                self.tombstones.popitem(last=False)

    # -- intake ----------------------------------------------------------------------------

    def add(self, event: dict[str, Any]) -> None:
        """Fold one queued event (not a score) into its trace.

        Events carry ``_t``, their time stamp (int nanoseconds), as the flusher makes sure.
        """
        etype = event.get("type")
        body = event.get("body") or {}
        t = event.get("_t", 0)
        if etype == "trace-create":
            trace_id = str(body.get("id"))
            buf = self.active.get(trace_id) or self._buf(trace_id)
            buf.trace_events.append(event)
            buf.folded = None
            buf.needs_root = True
        else:
            trace_id = str(body.get("traceId"))
            buf = self.active.get(trace_id) or self._buf(trace_id)
            obs_id = str(body.get("id"))
            events = buf.obs.get(obs_id)
            if events is None:
                buf.obs[obs_id] = [event]
            else:
                events.append(event)
            if etype != "event-create" and "endTime" not in body:
                buf.open_obs = True
            if str(etype).endswith("-create") and not body.get("parentObservationId"):
                buf.needs_root = True
                if buf.root_name is None and isinstance(body.get("name"), str):
                    buf.root_name = body["name"]
        if not buf.first_ns or t < buf.first_ns:
            buf.first_ns = t
        if t > buf.last_ns:
            buf.last_ns = t
        self.held += 1
        self._changed.add(trace_id)

    # -- decisions -------------------------------------------------------------------------

    def collect(
        self,
        watermark_ns: int,
        now_ns: int,
        forced_ns: int,
        everything: bool = False,
        limit: Optional[int] = None,
    ) -> Outcome:
        """Everything exportable now (or, with ``limit``, about that many items of it).

        ``watermark_ns``: every journal line stamped before it has been read.
        ``forced_ns``: events stamped at or before it are exported without waiting (a flush
        marker the watermark has passed); 0 for none. ``everything``: look at every trace
        (a marker came due), not only those that changed or whose timer is due.
        ``limit``: stop looking at traces once this many items are ready; the traces not
        looked at yet are looked at first by the next call (see :attr:`deferred`). This keeps
        a large backlog coming due at once (the end of a drain) from stalling the sending.
        """
        out = Outcome()
        due = self._changed
        self._changed = set()
        while self._timers and self._timers[0][0] <= watermark_ns:
            due.add(heapq.heappop(self._timers)[1])
        if everything:
            due.update(self.active)
        elif now_ns - self._last_open_scan >= OPEN_CHECK_NS:
            self._last_open_scan = now_ns
            due.update(tid for tid, buf in self.active.items() if buf.open_obs)
        if self._deferred:
            due.difference_update(self._deferred)
            order = self._deferred + list(due)
            self._deferred = []
        else:
            order = list(due)
        self._check(order)
        for index, trace_id in enumerate(order):
            if limit is not None and len(out.ready) >= limit:
                self._deferred = order[index:]
                break
            buf = self.active.get(trace_id)
            if buf is None:
                continue
            wake = self._examine(buf, watermark_ns, now_ns, forced_ns, out)
            if wake:
                heapq.heappush(self._timers, (wake, trace_id))
        return out

    @property
    def deferred(self) -> int:
        """Traces due but not looked at yet (a ``collect`` stopped at its limit)."""
        return len(self._deferred)

    def _examine(
        self, buf: TraceBuf, watermark_ns: int, now_ns: int, forced_ns: int, out: Outcome
    ) -> int:
        """Export what is ready in one trace; returns the watermark at which to look again."""
        wake = 0
        if buf.obs:
            wake = self._observations(buf, watermark_ns, now_ns, forced_ns, out)
        if buf.root == ROOT_EXPORTED and buf.trace_events:
            # The root went out already; later trace fields still reach later spans.
            buf.fields = buf.trace_fields()
            out.dropped.setdefault("late_update", []).extend(buf.trace_events)
            self.held -= len(buf.trace_events)
            buf.trace_events = []
            buf.folded = None
        if buf.needs_root and buf.root != ROOT_EXPORTED and not buf.obs:
            quiet_at = buf.last_ns + self.trace_idle_ns
            if buf.root == ROOT_QUARANTINED and not buf.trace_events:
                pass  # nothing new to send for a root the server refused
            elif watermark_ns >= quiet_at or (forced_ns and buf.last_ns <= forced_ns):
                out.ready.append(self._root(buf))
            else:
                wake = min(wake, quiet_at) if wake else quiet_at
        return wake

    def _observations(
        self, buf: TraceBuf, watermark_ns: int, now_ns: int, forced_ns: int, out: Outcome
    ) -> int:
        wake = 0
        still_open = False
        grace_ns = self.grace_ns
        done: list[str] = []  # exported or dropped: forgotten after the loop
        for obs_id, events in buf.obs.items():
            if len(events) == 1:
                last = events[0].get("_t", 0)
            elif len(events) == 2:
                last = events[0].get("_t", 0)
                second = events[1].get("_t", 0)
                if second > last:
                    last = second
            else:
                last = max([e.get("_t", 0) for e in events])
            settle_at = last + grace_ns
            settled = watermark_ns >= settle_at or bool(forced_ns and last <= forced_ns)
            if not settled and _settling(events):
                # Created and ended: it only waits for the grace period (the common case in
                # a backlog, where it is looked at again as more of its trace is read).
                wake = min(wake, settle_at) if wake else settle_at
                continue
            kind, has_create, fields = fold_observation(events)
            ended = kind == "event" or "endTime" in fields
            warning: Optional[str] = None
            if not has_create:
                orphan_at = last + ORPHAN_WAIT_NS
                if watermark_ns >= orphan_at:
                    out.dropped.setdefault("orphan_update", []).extend(events)
                    done.append(obs_id)
                else:
                    wake = min(wake, orphan_at) if wake else orphan_at
                continue
            if not ended:
                start = _ns(fields.get("startTime"), last)
                create = next(e for e in events if str(e.get("type")).endswith("-create"))
                writer = str(create.get("_w", ""))
                if settled and writer and not self.writer_alive(writer):
                    warning = (
                        f"langfuse-dq: the process that recorded this observation (pid "
                        f"{create.get('_p')}) exited before end() was called; exported as it was"
                    )
                elif now_ns - int(create.get("_t", start)) > self.max_open_ns:
                    warning = (
                        f"langfuse-dq: still open after {self.max_open_ns // 1_000_000_000} s "
                        "(max_open_seconds); exported as it was"
                    )
                else:
                    still_open = True
                    if not settled:
                        wake = min(wake, settle_at) if wake else settle_at
                    continue
                fields["endTime_ns"] = max(last, start)
            elif not settled:
                wake = min(wake, settle_at) if wake else settle_at
                continue
            out.ready.append(self._observation(buf, obs_id, kind, fields, events, warning))
            done.append(obs_id)
        if done:
            obs = buf.obs
            forgotten = 0
            for obs_id in done:
                forgotten += len(obs.pop(obs_id))
            self.held -= forgotten
        buf.open_obs = still_open
        return wake

    def _observation(
        self,
        buf: TraceBuf,
        obs_id: str,
        kind: str,
        fields: dict[str, Any],
        events: list[dict[str, Any]],
        warning: Optional[str],
    ) -> Ready:
        if len(events) == 1:
            first_t = events[0].get("_t", 0)
        elif len(events) == 2:  # a create and its update, most often
            first_t = events[0].get("_t", 0)
            second = events[1].get("_t", 0)
            if second < first_t:
                first_t = second
        else:
            first_t = min([e.get("_t", 0) for e in events])
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
            parent = buf.root_id
            buf.needs_root = True
        buf.child_start = start if buf.child_start is None else min(buf.child_start, start)
        buf.child_end = end if buf.child_end is None else max(buf.child_end, end)
        span = SpanData(  # positional (the field order), a little cheaper than by keyword
            buf.id,
            obs_id,
            parent,
            str(fields.get("name") or kind),
            kind if kind in _OBS_KINDS else "span",
            start,
            end,
            fields,
            buf.trace_fields(),
            False,
            warning,
        )
        return Ready(events, span)

    def _root(self, buf: TraceBuf) -> Ready:
        fields = buf.trace_fields()
        trace_ts = _ns(fields.get("timestamp"), buf.first_ns)
        starts = [t for t in (trace_ts, buf.child_start) if t]
        start = min(starts) if starts else buf.first_ns
        end = max(buf.child_end or 0, buf.last_ns, start)
        span_fields: dict[str, Any] = {}
        for key in ("input", "output"):
            if key in fields:
                span_fields[key] = fields[key]
        if fields.get("environment"):
            span_fields["environment"] = fields["environment"]
        name = fields.get("name") or buf.root_name or "trace"
        span = SpanData(
            trace_id=buf.id,
            span_id=buf.root_id,
            parent_id=None,
            name=str(name),
            kind="span",
            start_ns=start,
            end_ns=end,
            fields=span_fields,
            trace_fields=fields,
            is_root=True,
        )
        events = buf.trace_events
        self.held -= len(events)
        buf.fields = fields
        buf.trace_events = []
        buf.folded = None
        buf.root = ROOT_EXPORTED
        return Ready(events=events, span=span)

    # -- results of delivery ---------------------------------------------------------------

    def root_settled(self, trace_id: str, quarantined: bool) -> None:
        """The root of ``trace_id`` was delivered (or quarantined): record it in a tombstone."""
        buf = self.active.get(trace_id) or self.tombstones.get(trace_id)
        if buf is None:
            return
        buf.root_sent = ROOT_QUARANTINED if quarantined else ROOT_EXPORTED
        if quarantined:
            buf.root = ROOT_QUARANTINED
        self.to_persist[trace_id] = buf
