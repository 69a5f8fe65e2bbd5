"""The current trace and observation of the running code, kept in a ``contextvars`` variable.

``@observe`` (see decorators.py) makes the observation it creates current while the decorated
function runs, so that decorated functions called from it nest under it, and so that code deep
in a call stack can reach the trace without passing it around::

    from langfuse_dq import get_client, observe

    @observe()
    def retrieve(query: str) -> list[str]:
        get_client().current_trace().update(user_id="u1")     # the trace of this request
        get_client().current_observation().update(metadata={"index": "v2"})
        ...

Scope of "current" (this is what ``contextvars`` gives):

- **threads**: each thread has a context of its own, starting empty. A function running in a
  new thread (or in a ``ThreadPoolExecutor``) starts a trace of its own unless it is run in a
  copy of the caller's context: ``executor.submit(contextvars.copy_context().run, fn, arg)``.
- **asyncio**: a task copies the context of the code that created it, so coroutines started
  with ``asyncio.gather``/``create_task`` inside a decorated function nest under it.
- **processes** share nothing: pass ``trace.id`` (and the parent's ``id``) to the other process
  and use ``langfuse_trace_id=``/``langfuse_parent_observation_id=`` there (see decorators.py).

Code that creates traces and spans by hand can make one current with :func:`as_current`, so
that decorated functions it calls nest under it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from .observations import Generation, Span, Trace

if TYPE_CHECKING:
    from .client import Langfuse

#: What can be current below a trace: the observations that have a duration.
Observation = Union[Span, Generation]


class Frame(NamedTuple):
    """What is current: a trace, and the innermost observation in it (None at the top)."""

    trace: Trace
    observation: Optional[Observation]

    @property
    def client(self) -> Langfuse:
        """The client the trace belongs to; nested observations use the same one."""
        client: Langfuse = self.trace._client
        return client


_current: contextvars.ContextVar[Optional[Frame]] = contextvars.ContextVar(
    "langfuse_dq_current", default=None
)


def current_frame() -> Optional[Frame]:
    """The current frame of this thread or task, or None outside any trace."""
    return _current.get()


def current_trace() -> Optional[Trace]:
    """The current trace, or None when no trace is current in this thread or task."""
    frame = _current.get()
    return None if frame is None else frame.trace


def current_observation() -> Optional[Observation]:
    """The innermost current span or generation, or None (outside one, or at a trace's top)."""
    frame = _current.get()
    return None if frame is None else frame.observation


def set_frame(frame: Optional[Frame]) -> contextvars.Token[Optional[Frame]]:
    """Make ``frame`` current; give the token back to :func:`reset_frame`. (For decorators.)"""
    return _current.set(frame)


def reset_frame(token: contextvars.Token[Optional[Frame]]) -> None:
    """Restore what was current before the matching :func:`set_frame`."""
    _current.reset(token)


@contextlib.contextmanager
def as_current(obj: Union[Trace, Span, Generation]) -> Iterator[Union[Trace, Span, Generation]]:
    """Make a trace (or a span or generation) current for the ``with`` block.

    Decorated functions called inside the block nest under ``obj``; ``current_trace()`` and
    ``current_observation()`` return it. Nothing is sent and nothing is ended on exit::

        trace = lf.trace(name="request", user_id=user)
        with as_current(trace):
            answer = pipeline(question)          # @observe functions become its spans
        trace.update(output=answer)

    A span or generation made current this way must belong to a trace: the trace object
    returned for it by ``current_trace()`` is a handle on the same trace id (updating it
    sends trace fields for that id).
    """
    if isinstance(obj, Trace):
        frame = Frame(obj, None)
    elif isinstance(obj, (Span, Generation)):
        outer = _current.get()
        if outer is not None and outer.trace.id == obj.trace_id:
            trace = outer.trace
        else:
            trace = trace_handle(obj._client, obj.trace_id, obj._active)
        frame = Frame(trace, obj)
    else:
        raise TypeError(f"as_current() takes a Trace, Span or Generation, got {type(obj).__name__}")
    token = _current.set(frame)
    try:
        yield obj
    finally:
        _current.reset(token)


def trace_handle(client: Langfuse, trace_id: str, active: bool) -> Trace:
    """A Trace object for an existing trace id, created without sending anything.

    Used when the trace was started elsewhere (another process, or by hand): updating the
    handle sends trace fields for that id, as ``lf.trace(id=...)`` would.
    """
    return Trace(client, trace_id, trace_id, {}, active)
