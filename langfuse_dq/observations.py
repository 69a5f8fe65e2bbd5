"""The stateful objects the client returns: Trace, Span, Generation, Event, Score.

They hold ids and the fields set so far, and turn method calls into queued events through
their client. Fields may also be set as attributes (``gen.output = ...``) and are sent with the
next ``update()`` or ``end()``. Objects of a disabled or sampled-out client behave the same but
enqueue nothing, so application code never needs to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from .fields import (
    EVENT_FIELDS,
    GENERATION_FIELDS,
    SPAN_FIELDS,
    TRACE_FIELDS,
    Converter,
    convert,
    usage_fields,
)

if TYPE_CHECKING:
    from .client import Langfuse

_T = TypeVar("_T", bound="_Stateful")


class _Stateful:
    """Common machinery: ids, attribute-settable fields, pending fields."""

    _SETTABLE: ClassVar[Mapping[str, tuple[str, Converter]]] = {}
    _KIND: ClassVar[str] = ""
    _CREATE: ClassVar[str] = ""

    def __init__(
        self, client: Langfuse, id: str, trace_id: str, values: dict[str, Any], active: bool
    ) -> None:
        self.__dict__.update(
            _client=client,
            _id=id,
            _trace_id=trace_id,
            _values=values,
            _pending={},
            _active=active,
        )

    @property
    def id(self) -> str:
        """The id in wire form (32 hex for a trace, 16 hex for an observation)."""
        return self._id  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        spec = type(self)._SETTABLE.get(name)
        if spec is not None:
            return self._values.get(spec[0])
        if name == "usage" and "usage" in type(self)._SETTABLE_EXTRA:
            return self._values.get("usage")
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    _SETTABLE_EXTRA: ClassVar[tuple[str, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name == "usage" and "usage" in type(self)._SETTABLE_EXTRA:
            fields = usage_fields(value)
            self._pending.update(fields)
            self._values.update(fields)
            self._values["usage"] = value
            return
        spec = type(self)._SETTABLE.get(name)
        if spec is None:
            raise AttributeError(
                f"cannot set {name!r} on {type(self).__name__}; settable fields: "
                f"{', '.join(sorted([*type(self)._SETTABLE, *type(self)._SETTABLE_EXTRA]))}"
            )
        wire, converter = spec
        converted = None if value is None else converter(value, name)
        self._pending[wire] = converted
        self._values[wire] = converted

    def _take_pending(self, kwargs: dict[str, Any], call: str) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if "usage" in kwargs and "usage" in type(self)._SETTABLE_EXTRA:
            extra = usage_fields(kwargs.pop("usage"))
        fields = convert(kwargs, type(self)._SETTABLE, call)
        body = {k: v for k, v in self._pending.items() if v is not None}
        body.update(fields)
        body.update(extra)
        self._pending.clear()
        self._values.update(fields)
        self._values.update(extra)
        return body


class _Parent(_Stateful):
    """Something observations can be created under (a trace or an observation)."""

    def _parent_id(self) -> Optional[str]:
        return None

    def span(self, **kwargs: Any) -> Span:
        """Start a span under this object (see ``Langfuse.span`` for the keywords)."""
        return self._client._observation(  # type: ignore[no-any-return]
            Span, self._trace_id, self._parent_id(), kwargs, "span", self._active
        )

    def generation(self, **kwargs: Any) -> Generation:
        """Start a generation (an LLM call) under this object."""
        return self._client._observation(  # type: ignore[no-any-return]
            Generation, self._trace_id, self._parent_id(), kwargs, "generation", self._active
        )

    def event(self, **kwargs: Any) -> Event:
        """Record a point-in-time event under this object."""
        return self._client._observation(  # type: ignore[no-any-return]
            Event, self._trace_id, self._parent_id(), kwargs, "event", self._active
        )

    def score(self, **kwargs: Any) -> Score:
        """Score this trace or observation (``name=``, ``value=``, optional ``comment=``...)."""
        if "trace_id" in kwargs or "observation_id" in kwargs:
            raise TypeError("score() on an object takes its trace_id/observation_id from it")
        score: Score = self._client._score(
            trace_id=self._trace_id,
            observation_id=self._parent_id(),
            active=self._active,
            **kwargs,
        )
        return score


class Trace(_Parent):
    """One trace: the unit Langfuse shows as a request, a job run or a conversation turn."""

    _SETTABLE = TRACE_FIELDS
    _KIND = "trace"

    @property
    def trace_id(self) -> str:
        """The same as ``id``."""
        return self._trace_id  # type: ignore[no-any-return]

    def update(self, **kwargs: Any) -> Trace:
        """Send later fields of this trace (``output=``, ``metadata=``, ``tags=``...)."""
        body = self._take_pending(kwargs, "update")
        if self._active:
            self._client._emit_trace(self._id, body)
        return self

    def __repr__(self) -> str:
        return f"<Trace id={self._id} name={self._values.get('name')!r}>"


class _Observation(_Parent):
    """A span-like observation: it starts, may be updated, and ends."""

    _ended = False

    @property
    def trace_id(self) -> str:
        """The id of the trace this observation belongs to."""
        return self._trace_id  # type: ignore[no-any-return]

    @property
    def parent_observation_id(self) -> Optional[str]:
        """The id of the enclosing observation, or None at the top of the trace."""
        parent: Optional[str] = self._values.get("parentObservationId")
        return parent

    @property
    def ended(self) -> bool:
        """True once ``end()`` was called."""
        return self._ended

    def _parent_id(self) -> Optional[str]:
        return self._id  # type: ignore[no-any-return]

    def child_span(self, **kwargs: Any) -> Span:
        """Alias of ``span()``: a nested span."""
        return self.span(**kwargs)

    def update(self: _T, **kwargs: Any) -> _T:
        """Send fields now without ending (``metadata=``, ``output=``, ``level=``...)."""
        body = self._take_pending(kwargs, "update")
        if self._active and body:
            self._client._emit_update(self._KIND, self._id, self._trace_id, body)
        return self

    def end(self: _T, **kwargs: Any) -> _T:
        """End the observation now (or at ``end_time=``), sending any fields set before."""
        if self._ended:
            return self
        body = self._take_pending(kwargs, "end")
        if "endTime" not in body:
            body["endTime"] = self._client._now_iso()
        self._values["endTime"] = body["endTime"]
        object.__setattr__(self, "_ended", True)
        if self._active:
            self._client._emit_update(self._KIND, self._id, self._trace_id, body)
        return self

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is not None and not self._ended:
            self._pending["level"] = "ERROR"
            text = str(exc)
            self._pending["statusMessage"] = (
                f"{exc_type.__name__}: {text}"
                if exc_type and text
                else (exc_type.__name__ if exc_type else text)
            )
        self.end()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} id={self._id} trace_id={self._trace_id} "
            f"name={self._values.get('name')!r}>"
        )


class Span(_Observation):
    """A unit of work inside a trace; ends with ``end()`` or at the end of a ``with`` block."""

    _SETTABLE = SPAN_FIELDS
    _KIND = "span"
    _CREATE = "span-create"


class Generation(_Observation):
    """An LLM call: model, parameters, usage and cost on top of a span's fields."""

    _SETTABLE = GENERATION_FIELDS
    _SETTABLE_EXTRA = ("usage",)
    _KIND = "generation"
    _CREATE = "generation-create"


class Event(_Parent):
    """A point-in-time observation (it starts and ends at once)."""

    _SETTABLE = EVENT_FIELDS
    _KIND = "event"
    _CREATE = "event-create"

    @property
    def trace_id(self) -> str:
        """The id of the trace this event belongs to."""
        return self._trace_id  # type: ignore[no-any-return]

    def _parent_id(self) -> Optional[str]:
        return self._id  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Event id={self._id} trace_id={self._trace_id} name={self._values.get('name')!r}>"


class Score:
    """A score attached to a trace or an observation."""

    __slots__ = ("comment", "data_type", "id", "name", "observation_id", "trace_id", "value")

    def __init__(
        self,
        id: str,
        trace_id: str,
        observation_id: Optional[str],
        name: str,
        value: Any,
        data_type: Optional[str],
        comment: Optional[str],
    ) -> None:
        self.id = id
        self.trace_id = trace_id
        self.observation_id = observation_id
        self.name = name
        self.value = value
        self.data_type = data_type
        self.comment = comment

    def __repr__(self) -> str:
        return (
            f"<Score id={self.id} trace_id={self.trace_id} name={self.name!r} value={self.value!r}>"
        )
