"""``@observe``: turn a function call into a span (or a generation), nested automatically.

::

    from langfuse_dq import get_client, observe

    @observe()                                    # a span named "retrieve"
    def retrieve(query: str, top_k: int = 3) -> list[str]:
        ...

    @observe(as_type="generation", name="llm")    # a generation
    async def answer(question: str) -> str:
        get_client().current_observation().update(model="gpt-4o-mini", usage=Usage(...))
        ...

    @observe()
    def pipeline(question: str) -> str:           # outside any trace: starts a new trace
        docs = retrieve(question)                 # nested: a child span of "pipeline"
        return asyncio.run(answer(question))      # nested too (asyncio copies the context)

What is recorded:

- **Where**: under the current observation (or the current trace's top) of this thread or
  asyncio task; when there is none, a new trace named after the function is started, with the
  same input and output as its top span. The current trace/observation is kept in a
  ``contextvars`` variable (see context.py): threads start empty, asyncio tasks inherit.
- **Input**: the arguments as passed, by parameter name (``self``/``cls`` left out; ``**kwargs``
  merged in). **Output**: the return value. For a generator (sync or async) the span starts at
  the first iteration and ends when the generator is exhausted, closed or raises; its output is
  the items produced: joined into one string when they are all strings (streamed LLM tokens),
  else a list (the first 1,000 items, plus ``{"items_total": n}`` when there were more).
- **Exceptions**: an exception escaping the function ends the observation with
  ``level="ERROR"`` and ``status_message="ValueError: text"``, then propagates unchanged. A
  ``BaseException`` that is not an ``Exception`` (``asyncio.CancelledError``,
  ``KeyboardInterrupt``, ``SystemExit``) is recorded as ``level="WARNING"``, "interrupted by ...".

Opting out of capturing data: per decorator ``@observe(capture_input=False,
capture_output=False)``; per call with reserved keyword arguments, which the wrapper removes
before calling the function (so the function must not have parameters of these names):

- ``langfuse_capture=False``: neither input nor output for this call;
  ``langfuse_capture_input=`` / ``langfuse_capture_output=``: one of them (True forces it on);
- ``langfuse_trace_id=`` (and optionally ``langfuse_parent_observation_id=``): record this call
  into an existing trace, e.g. a trace started by the web request that enqueued a Celery task.

The client is the one of the current trace; outside any trace it is ``client=`` given to the
decorator, else ``get_client()``. A disabled or sampled-out client records nothing, and the
decorated function then costs a few microseconds more than the bare function.

The wrapper of a generator function is a plain function that returns a generator (so that the
parent is the observation current at the call, as with ``StreamingResponse(gen())``);
``inspect.isgeneratorfunction()`` of the decorated function is therefore False.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, TypeVar, Union, overload

from .context import Frame, current_frame, reset_frame, set_frame, trace_handle
from .ids import new_observation_id, new_trace_id, observation_id_from, trace_id_from
from .observations import Generation, Span, Trace

if TYPE_CHECKING:
    from .client import Langfuse

F = TypeVar("F", bound=Callable[..., Any])

AS_TYPES = ("span", "generation")
#: Keyword arguments a decorated function's callers may pass to steer one call.
RESERVED_KWARGS = (
    "langfuse_capture",
    "langfuse_capture_input",
    "langfuse_capture_output",
    "langfuse_trace_id",
    "langfuse_parent_observation_id",
)
#: A generator's output keeps at most this many non-string items (strings are all joined).
MAX_COLLECTED_ITEMS = 1000


class _CallOptions(NamedTuple):
    capture_input: bool
    capture_output: bool
    trace_id: Any
    parent_id: Any


class _Started(NamedTuple):
    frame: Frame
    observation: Union[Span, Generation]
    owns_trace: bool  # the trace was started for this call: it gets the output too
    capture_output: bool


def _status(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Collector:
    """The items a generator produced, as the observation's output."""

    __slots__ = ("count", "items", "strings")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.count = 0
        self.strings = True

    def add(self, item: Any) -> None:
        self.count += 1
        if self.strings and not isinstance(item, str):
            self.strings = False
            if len(self.items) > MAX_COLLECTED_ITEMS:
                del self.items[MAX_COLLECTED_ITEMS:]
        if self.strings or len(self.items) < MAX_COLLECTED_ITEMS:
            self.items.append(item)

    def output(self) -> Any:
        if self.strings and self.items:
            return "".join(self.items)
        if self.count > len(self.items):
            return [*self.items, {"items_total": self.count}]
        return self.items


class _Observer:
    """The state of one ``@observe`` decoration and the wrappers it builds."""

    def __init__(
        self,
        func: Callable[..., Any],
        name: Optional[str],
        as_type: str,
        capture_input: bool,
        capture_output: bool,
        client: Optional[Langfuse],
    ) -> None:
        self.func = func
        self.name = name or getattr(func, "__name__", None) or type(func).__name__
        self.as_type = as_type
        self.capture_input = capture_input
        self.capture_output = capture_output
        self.client = client
        try:
            self.signature: Optional[inspect.Signature] = inspect.signature(func)
        except (TypeError, ValueError):
            self.signature = None
        self.skip_first = False
        self.var_keyword: Optional[str] = None
        if self.signature is not None:
            params = list(self.signature.parameters.values())
            self.skip_first = bool(params) and params[0].name in ("self", "cls")
            for p in params:
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    self.var_keyword = p.name

    # -- per call ---------------------------------------------------------------------------

    def options(self, kwargs: dict[str, Any]) -> _CallOptions:
        """Pop the reserved keyword arguments of one call."""
        capture_input = self.capture_input
        capture_output = self.capture_output
        trace_id = parent_id = None
        if kwargs and any(k.startswith("langfuse_") for k in kwargs):
            both = kwargs.pop("langfuse_capture", None)
            if both is not None:
                capture_input = capture_output = bool(both)
            value = kwargs.pop("langfuse_capture_input", None)
            if value is not None:
                capture_input = bool(value)
            value = kwargs.pop("langfuse_capture_output", None)
            if value is not None:
                capture_output = bool(value)
            trace_id = kwargs.pop("langfuse_trace_id", None)
            parent_id = kwargs.pop("langfuse_parent_observation_id", None)
            if parent_id is not None and trace_id is None:
                raise ValueError("langfuse_parent_observation_id requires langfuse_trace_id")
        return _CallOptions(capture_input, capture_output, trace_id, parent_id)

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's arguments as the observation's input: ``{parameter: value}``."""
        if self.signature is None:
            return {"args": list(args), "kwargs": kwargs}
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError:  # the call itself will raise; record what was passed
            return {"args": list(args), "kwargs": kwargs}
        values = dict(bound.arguments)
        if self.skip_first and values:
            del values[next(iter(values))]
        if self.var_keyword is not None and self.var_keyword in values:
            extra = values.pop(self.var_keyword)
            for key, value in extra.items():
                values.setdefault(key, value)
        return values

    def start(
        self,
        parent: Optional[Frame],
        opts: _CallOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Started:
        """Create the observation (and the trace when there is none) for one call."""
        fields: dict[str, Any] = {"name": self.name}
        owns_trace = False
        if opts.trace_id is not None:
            tid = trace_id_from(opts.trace_id, "langfuse_trace_id")
            pid = (
                None
                if opts.parent_id is None
                else observation_id_from(opts.parent_id, "langfuse_parent_observation_id")
            )
            if parent is not None and parent.trace.id == tid:
                trace = parent.trace
            else:
                client = self._client(parent)
                trace = trace_handle(client, tid, client._records(tid))
            if opts.capture_input and trace._active:
                fields["input"] = self.arguments(args, kwargs)
            client = trace._client
            create = client.generation if self.as_type == "generation" else client.span
            observation = create(trace_id=tid, parent_observation_id=pid, **fields)
        elif parent is not None:
            trace = parent.trace
            host: Union[Trace, Span, Generation] = parent.observation or trace
            if not host._active:  # sampled out or disabled: objects that record nothing
                observation = self._inactive(trace)
            else:
                if opts.capture_input:
                    fields["input"] = self.arguments(args, kwargs)
                observation = (
                    host.generation(**fields)
                    if self.as_type == "generation"
                    else host.span(**fields)
                )
        else:
            client = self._client(None)
            if not client.enabled:
                tid = new_trace_id()
                trace = Trace(client, tid, tid, {"name": self.name}, False)
                observation = self._inactive(trace)
            else:
                if opts.capture_input:
                    fields["input"] = self.arguments(args, kwargs)
                trace = client.trace(**fields)
                observation = (
                    trace.generation(**fields)
                    if self.as_type == "generation"
                    else trace.span(**fields)
                )
            owns_trace = True
        return _Started(Frame(trace, observation), observation, owns_trace, opts.capture_output)

    def _inactive(self, trace: Trace) -> Union[Span, Generation]:
        """An observation that records nothing, built without the cost of validating fields."""
        cls = Generation if self.as_type == "generation" else Span
        return cls(trace._client, new_observation_id(), trace.id, {"name": self.name}, False)

    def _client(self, parent: Optional[Frame]) -> Langfuse:
        if parent is not None:
            return parent.client
        if self.client is not None:
            return self.client
        from .client import get_client  # noqa: PLC0415 (client imports us indirectly)

        return get_client()

    @staticmethod
    def finish(started: _Started, output: Any, status: Optional[str] = None) -> None:
        """End the observation with the output (and give it to a trace started for it)."""
        observation = started.observation
        if not observation._active:  # records nothing: just mark it ended, cheaply
            object.__setattr__(observation, "_ended", True)
            return
        fields: dict[str, Any] = {}
        if started.capture_output:
            fields["output"] = output
        if status is not None:
            fields["status_message"] = status
        observation.end(**fields)
        if started.owns_trace and "output" in fields:
            started.frame.trace.update(output=output)

    @staticmethod
    def fail(started: _Started, exc: BaseException) -> None:
        """End the observation for an exception (which the caller re-raises)."""
        if isinstance(exc, Exception):
            started.observation.end(level="ERROR", status_message=_status(exc))
        else:
            started.observation.end(
                level="WARNING", status_message=f"interrupted by {_status(exc)}"
            )

    # -- wrappers ---------------------------------------------------------------------------

    def wrap(self) -> Callable[..., Any]:
        func = self.func
        if inspect.isasyncgenfunction(func):
            return self._wrap_async_generator_function()
        if inspect.iscoroutinefunction(func):
            return self._wrap_coroutine_function()
        if inspect.isgeneratorfunction(func):
            return self._wrap_generator_function()
        return self._wrap_function()

    def _wrap_function(self) -> Callable[..., Any]:
        func = self.func

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            opts = self.options(kwargs)
            started = self.start(current_frame(), opts, args, kwargs)
            token = set_frame(started.frame)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                self.fail(started, exc)
                raise
            finally:
                reset_frame(token)
            self.finish(started, result)
            return result

        return wrapper

    def _wrap_coroutine_function(self) -> Callable[..., Any]:
        func = self.func

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            opts = self.options(kwargs)
            started = self.start(current_frame(), opts, args, kwargs)
            token = set_frame(started.frame)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                self.fail(started, exc)
                raise
            finally:
                reset_frame(token)
            self.finish(started, result)
            return result

        return wrapper

    def _wrap_generator_function(self) -> Callable[..., Any]:
        func = self.func

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            opts = self.options(kwargs)
            parent = current_frame()
            return self._generator(func(*args, **kwargs), parent, opts, args, kwargs)

        return wrapper

    def _generator(
        self,
        gen: Generator[Any, Any, Any],
        parent: Optional[Frame],
        opts: _CallOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Generator[Any, Any, Any]:
        """Drive ``gen`` step by step with its observation current during each step."""
        started = self.start(parent, opts, args, kwargs)
        frame = started.frame
        items = _Collector()
        to_send: Any = None
        to_throw: Optional[BaseException] = None
        while True:
            token = set_frame(frame)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(to_send)
            except StopIteration as stop:
                self.finish(started, items.output())
                return stop.value
            except BaseException as exc:
                self.fail(started, exc)
                raise
            finally:
                reset_frame(token)
            if opts.capture_output:
                items.add(item)
            else:
                items.count += 1
            try:
                to_send = yield item
            except GeneratorExit:
                token = set_frame(frame)
                try:
                    gen.close()
                except BaseException as exc:
                    self.fail(started, exc)
                    raise
                finally:
                    reset_frame(token)
                self.finish(started, items.output(), f"closed after {items.count} items")
                raise
            except BaseException as exc:  # noqa: BLE001 (thrown in by the consumer: pass it on)
                to_throw = exc

    def _wrap_async_generator_function(self) -> Callable[..., Any]:
        func = self.func

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            opts = self.options(kwargs)
            parent = current_frame()
            return self._async_generator(func(*args, **kwargs), parent, opts, args, kwargs)

        return wrapper

    async def _async_generator(
        self,
        agen: AsyncGenerator[Any, Any],
        parent: Optional[Frame],
        opts: _CallOptions,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncGenerator[Any, Any]:
        """Drive ``agen`` step by step with its observation current during each step."""
        started = self.start(parent, opts, args, kwargs)
        frame = started.frame
        items = _Collector()
        to_send: Any = None
        to_throw: Optional[BaseException] = None
        while True:
            token = set_frame(frame)
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(to_send)
            except StopAsyncIteration:
                self.finish(started, items.output())
                return
            except BaseException as exc:
                self.fail(started, exc)
                raise
            finally:
                reset_frame(token)
            if opts.capture_output:
                items.add(item)
            else:
                items.count += 1
            try:
                to_send = yield item
            except GeneratorExit:
                token = set_frame(frame)
                try:
                    await agen.aclose()
                except BaseException as exc:
                    self.fail(started, exc)
                    raise
                finally:
                    reset_frame(token)
                self.finish(started, items.output(), f"closed after {items.count} items")
                raise
            except BaseException as exc:  # noqa: BLE001 (thrown in by the consumer: pass it on)
                to_throw = exc


@overload
def observe(func: F) -> F: ...


@overload
def observe(
    func: None = None,
    *,
    name: Optional[str] = None,
    as_type: str = "span",
    capture_input: bool = True,
    capture_output: bool = True,
    client: Optional[Langfuse] = None,
) -> Callable[[F], F]: ...


def observe(
    func: Optional[F] = None,
    *,
    name: Optional[str] = None,
    as_type: str = "span",
    capture_input: bool = True,
    capture_output: bool = True,
    client: Optional[Langfuse] = None,
) -> Union[F, Callable[[F], F]]:
    """Record each call of the decorated function as a span (or ``as_type="generation"``).

    Usable bare (``@observe``) or with options (``@observe(name=..., as_type=...,
    capture_input=..., capture_output=..., client=...)``). Works on functions, methods,
    coroutine functions, generator and async generator functions. See the module docstring
    for what is recorded and the per-call keywords (``langfuse_capture=False``...).
    """
    if as_type not in AS_TYPES:
        raise ValueError(f"as_type must be one of {', '.join(AS_TYPES)}, got {as_type!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"@observe decorates a callable, got {type(fn).__name__}")
        observer = _Observer(fn, name, as_type, capture_input, capture_output, client)
        return observer.wrap()  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate
