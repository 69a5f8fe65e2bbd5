"""@observe: spans (and generations) from decorated functions, nested through contextvars, for
sync and async functions and generators, per thread and per asyncio task; exceptions recorded
and re-raised; capture opt-outs. Asserted on the events in a temporary queue directory, and
once end to end on what the dev server receives."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import KEYS, Server, journal_events, stop_flusher
from langfuse_dq import Langfuse, Usage, as_current, get_client, observe
from langfuse_dq import client as client_module


@pytest.fixture
def lf(queue_dir: str) -> Iterator[Langfuse]:
    client = Langfuse(
        public_key="pk", secret_key="sk", host="http://127.0.0.1:9", queue_dir=queue_dir,
        autospawn=False,
    )  # fmt: skip
    yield client
    client.shutdown()


def fold(queue_dir: str) -> dict[str, dict[str, Any]]:
    """Observations and traces by id, create and update events merged (latest field wins)."""
    out: dict[str, dict[str, Any]] = {}
    for event in journal_events(queue_dir):
        kind = event["type"].split("-")[0]
        body = event["body"]
        record = out.setdefault(body["id"], {"kind": kind})
        record.update(body)
    return out


def named(queue_dir: str, name: str, kind: str = "span") -> list[dict[str, Any]]:
    return [r for r in fold(queue_dir).values() if r.get("name") == name and r["kind"] == kind]


def one(queue_dir: str, name: str, kind: str = "span") -> dict[str, Any]:
    found = named(queue_dir, name, kind)
    assert len(found) == 1, (name, kind, found)
    return found[0]


# --- sync functions, nesting, capture ------------------------------------------------------


def test_nested_sync_functions_become_nested_spans_of_one_new_trace(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    def leaf(x: int, scale: int = 10) -> int:
        return x * scale

    @observe(client=lf)
    def middle(x: int) -> int:
        return leaf(x) + leaf(x, scale=100)

    @observe(client=lf)
    def top(question: str, *, k: int) -> dict[str, Any]:
        return {"answer": middle(k)}

    assert top("why?", k=2) == {"answer": 220}
    trace = one(queue_dir, "top", "trace")
    assert trace["input"] == {"question": "why?", "k": 2}
    assert trace["output"] == {"answer": 220}
    top_span = one(queue_dir, "top")
    mid = one(queue_dir, "middle")
    leaves = named(queue_dir, "leaf")
    assert "parentObservationId" not in top_span
    assert mid["parentObservationId"] == top_span["id"]
    assert [leaf["parentObservationId"] for leaf in leaves] == [mid["id"], mid["id"]]
    assert {r["traceId"] for r in [top_span, mid, *leaves]} == {trace["id"]}
    assert [(leaf["input"], leaf["output"]) for leaf in leaves] == [
        ({"x": 2}, 20),
        ({"x": 2, "scale": 100}, 200),
    ]
    assert all("endTime" in r for r in [top_span, mid, *leaves])
    assert len(named(queue_dir, "middle", "trace")) == 0, "only the outermost starts a trace"


def test_methods_leave_self_out_and_kwargs_are_merged_into_the_input(
    lf: Langfuse, queue_dir: str
) -> None:
    class Retriever:
        @observe(client=lf, name="retrieve")
        def search(self, query: str, *extra: str, **options: Any) -> list[str]:
            return [query, *extra]

    assert Retriever().search("q", "more", top_k=3) == ["q", "more"]
    span = one(queue_dir, "retrieve")
    assert span["input"] == {"query": "q", "extra": ["more"], "top_k": 3}
    assert span["output"] == ["q", "more"]


def test_capture_can_be_turned_off_per_decorator_and_per_call(lf: Langfuse, queue_dir: str) -> None:
    seen: list[dict[str, Any]] = []

    @observe(client=lf, capture_input=False)
    def no_input(secret: str) -> str:
        return "visible"

    @observe(client=lf, capture_output=False)
    def no_output(x: int) -> str:
        return "hidden"

    @observe(client=lf)
    def per_call(secret: str, **kwargs: Any) -> str:
        seen.append(kwargs)
        return secret.upper()

    no_input("s3cret")
    no_output(1)
    per_call("p1", langfuse_capture=False)
    per_call("p2", langfuse_capture_input=False)
    per_call("p3", langfuse_capture_output=False)
    assert seen == [{}, {}, {}], "reserved keywords never reach the function"

    span = one(queue_dir, "no_input")
    assert "input" not in span and span["output"] == "visible"
    span = one(queue_dir, "no_output")
    assert span["input"] == {"x": 1} and "output" not in span
    calls = named(queue_dir, "per_call")
    assert [("input" in s, "output" in s) for s in calls] == [
        (False, False),
        (False, True),
        (True, False),
    ]
    traces = named(queue_dir, "per_call", "trace")
    assert not any("input" in t and t["input"] == {"secret": "p1"} for t in traces)
    assert b"s3cret" not in b"".join(str(e).encode() for e in journal_events(queue_dir))


def test_an_exception_is_recorded_as_error_and_re_raised_unchanged(
    lf: Langfuse, queue_dir: str
) -> None:
    error = ValueError("index unavailable")

    @observe(client=lf)
    def failing() -> None:
        raise error

    @observe(client=lf)
    def caller() -> None:
        failing()

    with pytest.raises(ValueError) as info:
        caller()
    assert info.value is error
    for name in ("failing", "caller"):
        span = one(queue_dir, name)
        assert span["level"] == "ERROR"
        assert span["statusMessage"] == "ValueError: index unavailable"
        assert "endTime" in span and "output" not in span


def test_generation_type_and_current_observation_updates(lf: Langfuse, queue_dir: str) -> None:
    @observe(client=lf, as_type="generation", name="llm")
    def call_llm(prompt: str) -> str:
        current = get_client().current_observation()
        assert current is not None and current.trace_id == lf.current_trace().id  # type: ignore[union-attr]
        lf.update_current_observation(model="gpt-4o-mini", usage=Usage(input=3, output=1))
        return "Paris"

    @observe(client=lf)
    def answer(q: str) -> str:
        lf.update_current_trace(user_id="u1", session_id="s1", tags=["qa"])
        lf.update_current_observation(metadata={"route": "qa"})
        return call_llm(q)

    assert lf.current_trace() is None and lf.current_observation() is None
    lf.update_current_trace(user_id="nobody")  # outside any trace: nothing happens
    assert answer("capital?") == "Paris"
    gen = one(queue_dir, "llm", "generation")
    assert gen["model"] == "gpt-4o-mini" and gen["output"] == "Paris"
    assert gen["usageDetails"] == {"input": 3, "output": 1}
    assert gen["parentObservationId"] == one(queue_dir, "answer")["id"]
    trace = one(queue_dir, "answer", "trace")
    assert (trace["userId"], trace["sessionId"], trace["tags"]) == ("u1", "s1", ["qa"])
    assert one(queue_dir, "answer")["metadata"] == {"route": "qa"}
    assert not any(r.get("userId") == "nobody" for r in fold(queue_dir).values())


def test_continuing_a_trace_by_id_and_nesting_under_a_hand_made_trace(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    def task(n: int) -> int:
        return n + 1

    trace = lf.trace(name="web-request")
    span = trace.span(name="enqueue")
    # Another process would receive these ids with the job:
    assert task(1, langfuse_trace_id=trace.id, langfuse_parent_observation_id=span.id) == 2
    with as_current(trace):
        assert lf.current_trace() is trace
        task(2)
    with as_current(span):
        assert lf.current_observation() is span
        task(3)
    span.end()
    spans = sorted(named(queue_dir, "task"), key=lambda s: s["input"]["n"])
    assert [s["traceId"] for s in spans] == [trace.id] * 3
    assert [s.get("parentObservationId") for s in spans] == [span.id, None, span.id]
    assert named(queue_dir, "task", "trace") == [], "no trace of its own"
    with pytest.raises(ValueError, match="langfuse_trace_id"):
        task(4, langfuse_parent_observation_id=span.id)


@pytest.mark.parametrize("setting", [{"enabled": False}, {"sample_rate": 0.0}])
def test_disabled_or_sampled_out_records_nothing_but_the_code_behaves_the_same(
    queue_dir: str, setting: dict[str, Any]
) -> None:
    off = Langfuse(
        public_key="pk", secret_key="sk", queue_dir=queue_dir, autospawn=False, **setting
    )

    @observe(client=off, as_type="generation")
    def inner(x: int) -> int:
        off.update_current_observation(model="m")
        return x + 1

    @observe(client=off)
    def work(x: int) -> int:
        trace = off.current_trace()
        assert trace is not None and off.current_observation() is not None
        trace.update(output="ignored")
        return inner(x) * 2

    @observe(client=off)
    def failing() -> None:
        raise KeyError("x")

    assert work(20) == 42
    with pytest.raises(KeyError):
        failing()
    assert off.current_trace() is None
    journal = Path(queue_dir, "journal")
    assert not journal.exists() or journal_events(queue_dir) == []


def test_invalid_decorator_arguments_raise_at_decoration() -> None:
    with pytest.raises(ValueError, match="as_type"):
        observe(as_type="event")
    with pytest.raises(TypeError, match="name"):
        observe(name=3)  # type: ignore[arg-type]


def test_default_client_is_used_outside_any_trace(
    queue_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANGFUSE_DQ_DIR", queue_dir)
    monkeypatch.setenv("LANGFUSE_DQ_AUTOSPAWN", "false")
    monkeypatch.setattr(client_module, "_default", None)

    @observe
    def bare(x: int) -> int:
        return x

    assert bare(5) == 5
    assert one(queue_dir, "bare")["output"] == 5
    get_client().shutdown()


# --- async ---------------------------------------------------------------------------------


def test_async_functions_nest_and_gathered_tasks_inherit_the_context(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    async def fetch(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i))
        return i * i

    @observe(client=lf)
    async def handler(request: str) -> list[int]:
        return list(await asyncio.gather(*(fetch(i) for i in range(3))))

    async def main() -> None:
        # two requests at once, each in a task of its own: their spans never mix
        results = await asyncio.gather(handler("a"), handler("b"))
        assert results == [[0, 1, 4], [0, 1, 4]]

    asyncio.run(main())
    handlers = {s["input"]["request"]: s for s in named(queue_dir, "handler")}
    assert set(handlers) == {"a", "b"}
    fetches = named(queue_dir, "fetch")
    assert len(fetches) == 6
    for h in handlers.values():
        children = [f for f in fetches if f["parentObservationId"] == h["id"]]
        assert sorted(c["output"] for c in children) == [0, 1, 4]
        assert {c["traceId"] for c in children} == {h["traceId"]}
    assert handlers["a"]["traceId"] != handlers["b"]["traceId"]


def test_async_exception_and_cancellation(lf: Langfuse, queue_dir: str) -> None:
    @observe(client=lf)
    async def boom() -> None:
        raise KeyError("k")

    @observe(client=lf)
    async def slow() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        with pytest.raises(KeyError):
            await boom()
        task = asyncio.ensure_future(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert one(queue_dir, "boom")["level"] == "ERROR"
    assert one(queue_dir, "boom")["statusMessage"] == "KeyError: 'k'"
    cancelled = one(queue_dir, "slow")
    assert cancelled["level"] == "WARNING"
    assert cancelled["statusMessage"].startswith("interrupted by CancelledError")


# --- generators ----------------------------------------------------------------------------


def test_sync_generator_span_lasts_until_exhausted_and_collects_the_items(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    def tokens(text: str) -> Iterator[str]:
        for word in text.split():
            yield word + " "

    @observe(client=lf)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            assert lf.current_observation() is not None
            assert lf.current_observation().name == "numbers"  # type: ignore[union-attr]
            yield i
        return None

    @observe(client=lf)
    def stream() -> str:
        gen = tokens("the capital is Paris")
        # not started yet: created at the first iteration, under the span current at the call
        assert named(queue_dir, "tokens") == []
        return "".join(gen)

    assert stream() == "the capital is Paris "
    assert lf.current_observation() is None
    assert list(numbers(3)) == [0, 1, 2]
    assert lf.current_observation() is None, "the generator's context does not leak out"
    tok = one(queue_dir, "tokens")
    assert tok["output"] == "the capital is Paris " and "endTime" in tok
    assert tok["parentObservationId"] == one(queue_dir, "stream")["id"]
    num = one(queue_dir, "numbers")
    assert num["output"] == [0, 1, 2] and num["input"] == {"n": 3}


def test_sync_generator_closed_early_or_raising(lf: Langfuse, queue_dir: str) -> None:
    @observe(client=lf)
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    @observe(client=lf)
    def broken() -> Iterator[int]:
        yield 1
        raise RuntimeError("stream cut")

    @observe(client=lf)
    def echo() -> Iterator[int]:
        received = yield 0
        while True:
            received = yield received * 2

    for i in endless():
        if i == 4:
            break
    with pytest.raises(RuntimeError, match="stream cut"):
        list(broken())
    gen = echo()
    assert next(gen) == 0 and gen.send(5) == 10 and gen.send(7) == 14
    gen.close()

    closed = one(queue_dir, "endless")
    assert closed["output"] == [0, 1, 2, 3, 4]
    assert closed["statusMessage"] == "closed after 5 items" and "endTime" in closed
    failed = one(queue_dir, "broken")
    assert failed["level"] == "ERROR" and failed["statusMessage"] == "RuntimeError: stream cut"
    assert one(queue_dir, "echo")["output"] == [0, 10, 14]


def test_generator_consumed_later_keeps_the_parent_of_its_call(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    def chunks() -> Iterator[str]:
        yield "a"
        yield "b"

    @observe(client=lf)
    def handler() -> Iterator[str]:
        return chunks()  # like StreamingResponse(gen()): iterated after the handler returned

    body = handler()
    assert "".join(body) == "ab"
    assert one(queue_dir, "chunks")["parentObservationId"] == one(queue_dir, "handler")["id"]


def test_async_generators_nest_and_end_when_exhausted_or_closed(
    lf: Langfuse, queue_dir: str
) -> None:
    @observe(client=lf)
    async def lookup(token: str) -> str:
        await asyncio.sleep(0)
        return token.upper()

    @observe(client=lf, as_type="generation", name="llm-stream")
    async def stream(prompt: str) -> AsyncIterator[str]:
        for token in prompt.split():
            yield await lookup(token)  # nested under the generation

    @observe(client=lf)
    async def ticker() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    @observe(client=lf)
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("cut")

    @observe(client=lf)
    async def main() -> None:
        assert [t async for t in stream("a b c")] == ["A", "B", "C"]
        agen = ticker()
        async for i in agen:
            if i == 2:
                break
        await agen.aclose()  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            async for _ in broken():
                pass

    asyncio.run(main())
    gen = one(queue_dir, "llm-stream", "generation")
    assert gen["output"] == "ABC" and gen["input"] == {"prompt": "a b c"}
    assert gen["parentObservationId"] == one(queue_dir, "main")["id"]
    lookups = named(queue_dir, "lookup")
    assert [x["parentObservationId"] for x in lookups] == [gen["id"]] * 3
    tick = one(queue_dir, "ticker")
    assert tick["output"] == [0, 1, 2] and tick["statusMessage"] == "closed after 3 items"
    assert one(queue_dir, "broken")["level"] == "ERROR"


# --- threads -------------------------------------------------------------------------------


def test_each_thread_has_its_own_context(lf: Langfuse, queue_dir: str) -> None:
    @observe(client=lf)
    def inner(tag: str) -> str:
        return tag

    @observe(client=lf)
    def outer(tag: str) -> str:
        barrier.wait(timeout=10)  # every thread is inside its outer span at once
        return inner(tag)

    @observe(client=lf)
    def request() -> None:
        # A plain thread starts with an empty context: a trace of its own.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(inner, "plain-thread").result()
            # Run in a copy of this context, it nests under this request.
            pool.submit(contextvars.copy_context().run, inner, "copied").result()

    barrier = threading.Barrier(8)
    threads = [threading.Thread(target=outer, args=(f"t{i}",)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    request()

    outers = {s["input"]["tag"]: s for s in named(queue_dir, "outer")}
    inners = {s["input"]["tag"]: s for s in named(queue_dir, "inner")}
    assert len(outers) == 8
    for tag, o in outers.items():
        assert inners[tag]["parentObservationId"] == o["id"], tag
        assert inners[tag]["traceId"] == o["traceId"]
    assert len({o["traceId"] for o in outers.values()}) == 8
    req = one(queue_dir, "request")
    assert "parentObservationId" not in inners["plain-thread"]
    assert inners["plain-thread"]["traceId"] != req["traceId"]
    assert inners["copied"]["parentObservationId"] == req["id"]


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_decorated_spans_reach_the_server_nested(queue_dir: str, server: Server) -> None:
    lf = Langfuse(
        public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
        secret_key=KEYS["LANGFUSE_SECRET_KEY"],
        host=server.url,
        queue_dir=queue_dir,
        flush_interval=0.2,
    )

    @observe(client=lf, as_type="generation")
    def llm(prompt: str) -> str:
        lf.update_current_observation(model="gpt-4o-mini")
        return "Paris"

    @observe(client=lf)
    def retrieve(q: str) -> list[str]:
        return ["doc"]

    @observe(client=lf)
    def pipeline(q: str) -> str:
        retrieve(q)
        with pytest.raises(ZeroDivisionError):
            divide()
        return llm(q)

    @observe(client=lf)
    def divide() -> float:
        return 1 / 0

    try:
        assert pipeline("capital?") == "Paris"
        assert lf.flush(timeout=30) is True
        received = server.spans()
        [root] = [s for s in received if "parentSpanId" not in s]  # the trace itself
        spans = {s["name"]: s for s in received if s is not root}
        assert len(spans) == len(received) - 1 == 4
        assert root["attrs"]["langfuse.trace.name"] == "pipeline"
        assert spans["pipeline"]["parentSpanId"] == root["spanId"]
        for child in ("retrieve", "llm", "divide"):
            assert spans[child]["parentSpanId"] == spans["pipeline"]["spanId"], child
        assert spans["llm"]["attrs"]["langfuse.observation.type"] == "generation"
        assert spans["llm"]["attrs"]["langfuse.observation.model.name"] == "gpt-4o-mini"
        assert spans["divide"]["attrs"]["langfuse.observation.level"] == "ERROR"
        assert spans["divide"]["attrs"]["langfuse.observation.status_message"] == (
            "ZeroDivisionError: division by zero"
        )
    finally:
        lf.shutdown()
        stop_flusher(queue_dir)
