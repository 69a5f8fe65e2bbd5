"""The Langfuse client: builds events, applies sampling and the mask, hands them to the queue.

Every public method validates its arguments (programming errors raise ``TypeError`` or
``ValueError`` naming the field) and then enqueues without waiting on the network and without
raising for a disk or server problem: such failures are logged once and counted.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional

from . import serialize
from .config import Config, resolve_config
from .fields import FREE_FIELDS, convert, score_value, usage_fields
from .ids import (
    new_envelope_id,
    new_observation_id,
    new_trace_id,
    observation_id_from,
    trace_id_from,
)
from .observations import Event, Generation, Score, Span, Trace, _Observation
from .queue import EventQueue
from .spawn import FlusherSupervisor
from .timeutil import iso_from_ns

log = logging.getLogger("langfuse_dq")

#: An event larger than this (encoded) has its largest free field truncated, as the official
#: SDK does: the legacy ingestion API caps an event at about 1 MB.
MAX_EVENT_BYTES = 1_000_000
_SAMPLE_SPACE = 1 << 64
_pid = os.getpid()
_warned: set[str] = set()


def _reset_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pid)


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


class Langfuse:
    """A durable Langfuse client: every event is on disk when the call returns.

    Keywords override environment variables (see README, Configuration)::

        lf = Langfuse()                       # LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, ...
        trace = lf.trace(name="user-query", user_id="u1")
        with trace.span(name="retrieve") as span:
            span.update(output={"docs": 3})
        lf.flush(timeout=10.0)
    """

    def __init__(
        self,
        *,
        public_key: Optional[str] = None,
        secret_key: Optional[str] = None,
        host: Optional[str] = None,
        queue_dir: Optional[str] = None,
        batch_size: Optional[int] = None,
        flush_interval: Optional[float] = None,
        transport: Optional[str] = None,
        autospawn: Optional[bool] = None,
        enabled: Optional[bool] = None,
        sample_rate: Optional[float] = None,
        mask: Optional[Callable[[Any], Any]] = None,
        release: Optional[str] = None,
        environment: Optional[str] = None,
        max_queue_bytes: Optional[int] = None,
        timeout: Optional[float] = None,
        full_policy: Optional[str] = None,
        max_open_seconds: Optional[float] = None,
        ca_bundle: Optional[str] = None,
    ) -> None:
        self.config: Config = resolve_config(
            public_key=public_key,
            secret_key=secret_key,
            host=host,
            queue_dir=queue_dir,
            batch_size=batch_size,
            flush_interval=flush_interval,
            transport=transport,
            autospawn=autospawn,
            enabled=enabled,
            sample_rate=sample_rate,
            mask=mask,
            release=release,
            environment=environment,
            max_queue_bytes=max_queue_bytes,
            timeout=timeout,
            full_policy=full_policy,
            max_open_seconds=max_open_seconds,
            ca_bundle=ca_bundle,
        )
        cfg = self.config
        self._queue: Optional[EventQueue] = None
        self._supervisor: Optional[FlusherSupervisor] = None
        self._sample_bound = int(cfg.sample_rate * _SAMPLE_SPACE)
        if not cfg.enabled:
            self._active = False
        elif not cfg.has_keys:
            self._active = False
            _warn_once(
                "keys",
                "langfuse-dq: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are not both set; "
                "tracing is disabled and every call is a no-op",
            )
        else:
            self._active = True
            self._queue = EventQueue(cfg.queue_dir, cfg.max_queue_bytes, cfg.full_policy)
            if cfg.autospawn and self._queue.qd is not None:
                self._supervisor = FlusherSupervisor(cfg, self._queue.qd)
            _register_atexit(self)
        self._captured = False
        _instances.add(self)
        hook = _on_new_client
        if hook is not None:
            hook(self)

    def __repr__(self) -> str:
        cfg = self.config
        return f"Langfuse(host={cfg.host!r}, queue_dir={cfg.queue_dir!r}, active={self._active})"

    # -- public API: traces and observations -------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when this client records events (keys set and tracing enabled)."""
        return self._active

    def trace(self, *, id: Any = None, **kwargs: Any) -> Trace:
        """Start (or, with an existing ``id``, update) a trace.

        Keywords: name, user_id, session_id, metadata, tags, input, output, release, version,
        public, timestamp, environment.
        """
        body = convert(kwargs, Trace._SETTABLE, "trace")
        trace_id = trace_id_from(id, "id") if id is not None else new_trace_id()
        active = self._records(trace_id)
        trace = Trace(self, trace_id, trace_id, dict(body), active)
        if active:
            ns = time.time_ns()
            body.setdefault("timestamp", iso_from_ns(ns))
            self._emit_trace(trace_id, body, ns)
        return trace

    def span(
        self,
        *,
        trace_id: Any = None,
        parent_observation_id: Any = None,
        id: Any = None,
        **kwargs: Any,
    ) -> Span:
        """Start a span in the trace ``trace_id`` (required), under ``parent_observation_id``."""
        tid = self._require_trace_id(trace_id, "span")
        parent = self._parent(parent_observation_id)
        span: Span = self._observation(Span, tid, parent, {"id": id, **kwargs}, "span")
        return span

    def generation(
        self,
        *,
        trace_id: Any = None,
        parent_observation_id: Any = None,
        id: Any = None,
        **kwargs: Any,
    ) -> Generation:
        """Start a generation (LLM call) in the trace ``trace_id`` (required)."""
        tid = self._require_trace_id(trace_id, "generation")
        parent = self._parent(parent_observation_id)
        return self._observation(  # type: ignore[no-any-return]
            Generation, tid, parent, {"id": id, **kwargs}, "generation"
        )

    def event(
        self,
        *,
        trace_id: Any = None,
        parent_observation_id: Any = None,
        id: Any = None,
        **kwargs: Any,
    ) -> Event:
        """Record a point-in-time event in the trace ``trace_id`` (required)."""
        tid = self._require_trace_id(trace_id, "event")
        parent = self._parent(parent_observation_id)
        event: Event = self._observation(Event, tid, parent, {"id": id, **kwargs}, "event")
        return event

    def score(self, *, trace_id: Any = None, **kwargs: Any) -> Score:
        """Score a trace (``trace_id`` required) or one of its observations (``observation_id``).

        Keywords: name (required), value (required: number, bool or str), observation_id,
        comment, data_type (NUMERIC, CATEGORICAL, BOOLEAN), id, config_id, metadata,
        environment.
        """
        tid = self._require_trace_id(trace_id, "score")
        if kwargs.get("observation_id") is not None:
            kwargs["observation_id"] = observation_id_from(
                kwargs["observation_id"], "observation_id"
            )
        return self._score(trace_id=tid, active=self._records(tid), **kwargs)

    def update_span(self, span_id: Any, *, trace_id: Any = None, **kwargs: Any) -> None:
        """Update (or with ``end_time=``, end) a span known only by its id."""
        self._update_by_id(Span, span_id, trace_id, kwargs, "update_span")

    def update_generation(self, generation_id: Any, *, trace_id: Any = None, **kwargs: Any) -> None:
        """Update (or with ``end_time=``, end) a generation known only by its id."""
        self._update_by_id(Generation, generation_id, trace_id, kwargs, "update_generation")

    # -- public API: delivery ------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event enqueued before this call is delivered, at most ``timeout`` s.

        Returns True when all of them were accepted by the server, False on timeout or when
        some were quarantined. Whatever is not delivered stays safely on disk.
        """
        if not self._active or self._queue is None or self._captured:
            return True
        from .delivery import wait_for_flush  # noqa: PLC0415 (keeps requests out of import time)

        return wait_for_flush(self.config, self._queue, self._supervisor, timeout)

    def shutdown(self, timeout: float = 0.5) -> None:
        """Make sure a flusher will deliver what is queued; bounded by ``timeout`` seconds.

        Nothing is lost and nothing is waited for: undelivered events stay on disk for the
        flusher (or the next ``langfuse-dq flush``). The client stays usable: an event
        recorded later is queued as usual.
        """
        if self._queue is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.close()
            wrote = self._queue.appended > 0
            left = deadline - time.monotonic()
            if wrote and self._supervisor is not None and left > 0:
                self._supervisor.check(background=False, wait=left)
        except Exception as exc:  # noqa: BLE001 (shutdown runs in atexit: it must not raise)
            log.debug("langfuse-dq: shutdown: %s", exc)

    def stats(self) -> dict[str, Any]:
        """The same figures as ``langfuse-dq status --json``."""
        from .stats import collect_stats  # noqa: PLC0415 (keeps requests out of import time)

        return collect_stats(self.config)

    # -- capture (used by the pytest plugin, langfuse_dq.testing) ----------------------------

    def _capture_into(self, queue: EventQueue) -> Callable[[], None]:
        """Record everything into ``queue`` (sampling off, no flusher, nothing sent) until the
        returned function is called. Lets the pytest plugin redirect clients built anywhere.
        """
        saved = (self.config, self._active, self._queue, self._supervisor, self._sample_bound)
        self.config = dataclasses.replace(
            self.config, queue_dir=queue.root, autospawn=False, enabled=True, sample_rate=1.0
        )
        self._active, self._queue, self._supervisor = True, queue, None
        self._sample_bound = _SAMPLE_SPACE
        self._captured = True

        def restore() -> None:
            self.config, self._active, self._queue, self._supervisor, self._sample_bound = saved
            self._captured = False

        return restore

    # -- internals used by the observation objects -------------------------------------------

    def _records(self, trace_id: str) -> bool:
        """Should events of this trace be written? (enabled, not shut down, sampled in)."""
        if not self._active:
            return False
        if self._sample_bound >= _SAMPLE_SPACE:
            return True
        return int(trace_id[16:32], 16) < self._sample_bound

    def _now_iso(self) -> str:
        return iso_from_ns(time.time_ns())

    @staticmethod
    def _require_trace_id(trace_id: Any, call: str) -> str:
        if trace_id is None:
            raise ValueError(
                f"{call}() requires trace_id (or call it on a Trace: trace.{call}(...))"
            )
        return trace_id_from(trace_id, "trace_id")

    @staticmethod
    def _parent(parent_observation_id: Any) -> Optional[str]:
        if parent_observation_id is None:
            return None
        return observation_id_from(parent_observation_id, "parent_observation_id")

    def _observation(
        self,
        cls: type[Any],
        trace_id: str,
        parent_id: Optional[str],
        kwargs: dict[str, Any],
        call: str,
        active: Optional[bool] = None,
    ) -> Any:
        given_id = kwargs.pop("id", None)
        usage = kwargs.pop("usage", None) if cls is Generation else None
        if "trace_id" in kwargs or "parent_observation_id" in kwargs:
            raise TypeError(f"{call}() on an object takes trace_id and parent from it")
        fields = convert(kwargs, cls._SETTABLE, call)
        if usage is not None:
            fields.update(usage_fields(usage))
        obs_id = new_observation_id() if given_id is None else observation_id_from(given_id, "id")
        body: dict[str, Any] = {"id": obs_id, "traceId": trace_id}
        if parent_id is not None:
            body["parentObservationId"] = parent_id
        body.update(fields)
        ns = time.time_ns()
        if "startTime" not in body:
            body["startTime"] = iso_from_ns(ns)
        values = dict(body)
        if usage is not None:
            values["usage"] = usage
        recording = self._records(trace_id) and active is not False
        obj = cls(self, obs_id, trace_id, values, recording)
        if "endTime" in body and issubclass(cls, _Observation):
            obj._ended = True
        if recording:
            self._emit(cls._CREATE, body, ns)
        return obj

    def _update_by_id(
        self, cls: type[Any], obs_id: Any, trace_id: Any, kwargs: dict[str, Any], call: str
    ) -> None:
        if obs_id is None:
            raise ValueError(f"{call}() requires the observation id")
        tid = self._require_trace_id(trace_id, call)
        kwargs = dict(kwargs)
        usage = kwargs.pop("usage", None) if cls is Generation else None
        body = convert(kwargs, cls._SETTABLE, call)
        if usage is not None:
            body.update(usage_fields(usage))
        if self._records(tid):
            self._emit_update(cls._KIND, observation_id_from(obs_id, "id"), tid, body)

    def _score(
        self,
        *,
        trace_id: str,
        observation_id: Optional[str] = None,
        active: bool = True,
        name: Any = None,
        value: Any = None,
        comment: Any = None,
        data_type: Any = None,
        id: Any = None,
        config_id: Any = None,
        metadata: Any = None,
        environment: Any = None,
        **unknown: Any,
    ) -> Score:
        if unknown:
            raise TypeError(f"score() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        if name is None:
            raise ValueError("score() requires name")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        wire_value, dtype = score_value(value, data_type)
        if comment is not None and not isinstance(comment, str):
            raise TypeError(f"comment must be a str, got {type(comment).__name__}")
        if config_id is not None and not isinstance(config_id, str):
            raise TypeError(f"config_id must be a str, got {type(config_id).__name__}")
        if id is not None and not isinstance(id, str):
            raise TypeError(f"id must be a str, got {type(id).__name__}")
        score_id = id or new_observation_id()
        body: dict[str, Any] = {
            "id": score_id,
            "traceId": trace_id,
            "name": name,
            "value": wire_value,
        }
        if observation_id is not None:
            body["observationId"] = observation_id
        if dtype is not None:
            body["dataType"] = dtype
        if comment is not None:
            body["comment"] = comment
        if config_id is not None:
            body["configId"] = config_id
        if metadata is not None:
            body["metadata"] = metadata
        if environment is not None:
            body["environment"] = environment
        if active and self._records(trace_id):
            self._emit("score-create", body)
        return Score(score_id, trace_id, observation_id, name, wire_value, dtype, comment)

    def _emit_trace(self, trace_id: str, fields: dict[str, Any], ns: int = 0) -> None:
        body = {"id": trace_id, **fields}
        if self.config.release and "release" not in body:
            body["release"] = self.config.release
        self._emit("trace-create", body, ns)

    def _emit_update(self, kind: str, obs_id: str, trace_id: str, fields: dict[str, Any]) -> None:
        if kind == "event":
            return
        self._emit(f"{kind}-update", {"id": obs_id, "traceId": trace_id, **fields})

    def _emit(self, event_type: str, body: dict[str, Any], ns: int = 0) -> None:
        """Encode one event and append it to the queue. Never raises."""
        queue = self._queue
        if queue is None:
            return
        try:
            cfg = self.config
            if cfg.mask is not None:
                for name in FREE_FIELDS:
                    if name in body:
                        body[name] = serialize.apply_mask(cfg.mask, body[name])
            if cfg.environment is not None and "environment" not in body:
                body["environment"] = cfg.environment
            if not ns:
                ns = time.time_ns()
            envelope: dict[str, Any] = {
                "id": new_envelope_id(),
                "type": event_type,
                "timestamp": iso_from_ns(ns),
                "body": body,
                "_t": ns,
                "_p": _pid,
            }
            if cfg.release:
                envelope["_r"] = cfg.release
            text = serialize.dumps_fields(envelope, body, FREE_FIELDS)
            if len(text) > MAX_EVENT_BYTES:
                for name in FREE_FIELDS:
                    if name in body:
                        body[name] = serialize.to_jsonable(body[name])
                serialize.truncate_body(
                    body, lambda: len(serialize.dumps(envelope)), MAX_EVENT_BYTES
                )
                text = serialize.dumps(envelope)
            now = time.monotonic()
            queue.put(text.encode("ascii") + b"\n", now)
            supervisor = self._supervisor
            if supervisor is not None and now >= supervisor.next_check:
                supervisor.poke(now)
        except Exception as exc:  # noqa: BLE001 (a bug of ours must not break the app)
            _warn_once(
                "emit:" + type(exc).__name__,
                "langfuse-dq: could not enqueue an event (%s: %s); it was dropped",
                type(exc).__name__,
                exc,
            )

    # -- public API: the current trace and observation (see context.py, decorators.py) --------

    def current_trace(self) -> Trace | None:
        """The trace current in this thread or asyncio task (``@observe``, ``as_current``).

        None outside any trace. It may belong to another client when several are in use.
        """
        from .context import current_trace  # noqa: PLC0415 (context imports observations)

        return current_trace()

    def current_observation(self) -> Span | Generation | None:
        """The innermost current span or generation (made by ``@observe``), or None."""
        from .context import current_observation  # noqa: PLC0415

        return current_observation()

    def update_current_trace(self, **kwargs: Any) -> None:
        """``current_trace().update(**kwargs)``, or nothing when no trace is current."""
        trace = self.current_trace()
        if trace is not None:
            trace.update(**kwargs)

    def update_current_observation(self, **kwargs: Any) -> None:
        """``current_observation().update(**kwargs)``, or nothing when none is current."""
        observation = self.current_observation()
        if observation is not None:
            observation.update(**kwargs)


# --- process-wide default client and exit hook ---------------------------------------------

_default: Optional[Langfuse] = None
_default_lock = threading.Lock()
_clients: weakref.WeakSet[Langfuse] = weakref.WeakSet()
#: Every client ever built in this process, and a hook called with each new one: both for
#: ``langfuse_dq.testing``, which redirects them all while its fixture is active.
_instances: weakref.WeakSet[Langfuse] = weakref.WeakSet()
_on_new_client: Optional[Callable[[Langfuse], None]] = None
_atexit_registered = False


def get_client() -> Langfuse:
    """The process-wide default client, created from the environment on first use."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = Langfuse()
            client = _default
    return client


def _register_atexit(client: Langfuse) -> None:
    global _atexit_registered
    _clients.add(client)
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_shutdown_all)


def _shutdown_all() -> None:
    for client in list(_clients):
        client.shutdown()
