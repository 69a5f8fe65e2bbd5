"""Traces reach the server as the right OTLP spans, encoded as the official SDK encodes them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import KEYS, Server, clean_env, run_python, stop_flusher, wait_for
from langfuse_dq import Langfuse, Usage
from langfuse_dq.ids import root_observation_id

HEX32 = "0123456789abcdef"


@pytest.fixture
def lf(queue_dir: str, server: Server) -> Iterator[Langfuse]:
    client = Langfuse(
        public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
        secret_key=KEYS["LANGFUSE_SECRET_KEY"],
        host=server.url,
        queue_dir=queue_dir,
        flush_interval=0.2,
        release="app-release-7",
        environment="staging",
    )
    yield client
    client.shutdown()
    stop_flusher(queue_dir)


def run_usage_example(lf: Langfuse) -> dict[str, Any]:
    """The usage example of SPEC §2, in a realistic order."""
    trace = lf.trace(
        name="user-query",
        user_id="u1",
        session_id="s1",
        metadata={"tenant": "acme", "request_no": 42},
        tags=["a"],
        input={"question": "What is the capital of France?"},
        release="app-release-7",
        version="app-1.4.2",
        public=False,
    )
    trace.update(output={"answer": "Paris."}, metadata={"route": "/ask"})
    span = trace.span(
        name="process-query",
        input={"query": "capital of France"},
        level="DEFAULT",
        metadata={"k": 1},
    )
    child = span.span(name="step")
    child.end(output="normalized")
    gen = trace.generation(
        name="llm-response",
        model="gpt-4o-mini",
        model_parameters={"temperature": 0.7},
        input=[{"role": "user", "content": "What is the capital of France?"}],
    )
    ev = trace.event(name="cache-hit", input={"key": "q"}, output={"hit": True})
    sc = trace.score(name="relevance", value=0.95, comment="Answer is correct and concise.")
    span_score = span.score(name="helpful", value=1)
    gen_score = gen.score(name="format", value="ok")
    gen.output = {"role": "assistant", "content": "Paris."}
    gen.usage = Usage(input=10, output=20, total=30)
    gen.end()
    span.update(metadata={"extra": "yes"})
    span.end(output={"normalized_query": "capital of france"})
    with pytest.raises(RuntimeError), trace.span(name="retrieve") as s:
        s.update(input={"top_k": 3})
        raise RuntimeError("index unavailable")
    assert lf.flush(timeout=30) is True
    return {
        "trace": trace,
        "span": span,
        "child": child,
        "gen": gen,
        "event": ev,
        "score": sc,
        "span_score": span_score,
        "gen_score": gen_score,
    }


def test_usage_example_arrives_as_the_right_spans_and_scores(lf: Langfuse, server: Server) -> None:
    objs = run_usage_example(lf)
    trace = objs["trace"]
    spans = {s["name"]: s for s in server.spans()}
    assert set(spans) == {
        "user-query",
        "process-query",
        "step",
        "llm-response",
        "cache-hit",
        "retrieve",
    }
    assert len(server.spans()) == 6, "each observation is exported exactly once"
    root = spans["user-query"]
    assert len(trace.id) == 32 and set(trace.id) <= set(HEX32)
    for span in spans.values():
        assert span["traceId"] == trace.id
        assert len(span["spanId"]) == 16 and set(span["spanId"]) <= set(HEX32)
        attrs = span["attrs"]
        # trace-level attributes on every span
        assert attrs["langfuse.trace.name"] == "user-query"
        assert attrs["user.id"] == "u1" and attrs["session.id"] == "s1"
        assert attrs["langfuse.trace.tags"] == ["a"]
        assert attrs["langfuse.trace.metadata.tenant"] == "acme"
        assert json.loads(attrs["langfuse.trace.metadata.request_no"]) == 42
        assert attrs["langfuse.release"] == "app-release-7"
        assert attrs["langfuse.environment"] == "staging"
        assert attrs["langfuse.version"] == "app-1.4.2"
        assert attrs["langfuse.trace.public"] is False
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0
        assert span["scope"]["name"].startswith("langfuse-sdk")
    # the root stands for the trace: its input and output
    assert "parentSpanId" not in root and root["spanId"] == root_observation_id(trace.id)
    assert json.loads(root["attrs"]["langfuse.observation.input"]) == {
        "question": "What is the capital of France?"
    }
    assert json.loads(root["attrs"]["langfuse.observation.output"]) == {"answer": "Paris."}
    assert root["attrs"]["langfuse.trace.metadata.route"] == "/ask"
    # parents
    assert spans["process-query"]["parentSpanId"] == root["spanId"]
    assert spans["step"]["parentSpanId"] == objs["span"].id == spans["process-query"]["spanId"]
    assert spans["llm-response"]["parentSpanId"] == root["spanId"]
    assert spans["cache-hit"]["parentSpanId"] == root["spanId"]
    # types and fields
    types = {name: s["attrs"]["langfuse.observation.type"] for name, s in spans.items()}
    assert types == {
        "user-query": "span",
        "process-query": "span",
        "step": "span",
        "llm-response": "generation",
        "cache-hit": "event",
        "retrieve": "span",
    }
    pq = spans["process-query"]["attrs"]
    assert json.loads(pq["langfuse.observation.input"]) == {"query": "capital of France"}
    assert json.loads(pq["langfuse.observation.output"]) == {
        "normalized_query": "capital of france"
    }
    assert json.loads(pq["langfuse.observation.metadata.k"]) == 1
    assert pq["langfuse.observation.metadata.extra"] == "yes", "updates are folded into the span"
    assert spans["step"]["attrs"]["langfuse.observation.output"] == "normalized"
    g = spans["llm-response"]["attrs"]
    assert g["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert json.loads(g["langfuse.observation.model.parameters"]) == {"temperature": 0.7}
    assert json.loads(g["langfuse.observation.usage_details"]) == {
        "input": 10,
        "output": 20,
        "total": 30,
    }
    assert json.loads(g["langfuse.observation.input"])[0]["role"] == "user"
    assert json.loads(g["langfuse.observation.output"]) == {
        "role": "assistant",
        "content": "Paris.",
    }
    ev = spans["cache-hit"]
    assert ev["startTimeUnixNano"] == ev["endTimeUnixNano"], "an event is a zero-length span"
    assert json.loads(ev["attrs"]["langfuse.observation.output"]) == {"hit": True}
    failed = spans["retrieve"]
    assert failed["attrs"]["langfuse.observation.level"] == "ERROR"
    assert (
        failed["attrs"]["langfuse.observation.status_message"] == "RuntimeError: index unavailable"
    )
    assert failed["status"] == {"code": 2, "message": "RuntimeError: index unavailable"}
    # scores go to the ingestion endpoint with the right ids
    scores = {e["body"]["name"]: e for e in server.events() if e["type"] == "score-create"}
    assert set(scores) == {"relevance", "helpful", "format"}
    assert scores["relevance"]["body"]["traceId"] == trace.id
    assert scores["relevance"]["body"]["value"] == 0.95
    assert "observationId" not in scores["relevance"]["body"]
    assert scores["helpful"]["body"]["observationId"] == objs["span"].id
    assert scores["format"]["body"]["observationId"] == objs["gen"].id
    assert scores["format"]["body"]["dataType"] == "CATEGORICAL"
    assert scores["relevance"]["timestamp"].endswith("Z")


def test_user_supplied_ids_map_like_the_official_sdk(lf: Langfuse, server: Server) -> None:
    trace = lf.trace(id="order-42", name="seeded")
    span = trace.span(id="step-1", name="s")
    span.end()
    lf.score(trace_id="order-42", observation_id="step-1", name="q", value=1)
    assert lf.flush(timeout=30)
    assert trace.id == "3bf8b157c4238eefe5ae4a66eca81c6b"
    ids = {s["name"]: s for s in server.spans()}
    assert ids["s"]["traceId"] == "3bf8b157c4238eefe5ae4a66eca81c6b"
    assert ids["s"]["spanId"] == span.id and len(span.id) == 16
    score = next(e for e in server.events() if e["type"] == "score-create")
    assert score["body"]["traceId"] == trace.id and score["body"]["observationId"] == span.id


OFFICIAL_DRIVER = """
import datetime, os
from langfuse import Langfuse, propagate_attributes
lf = Langfuse(public_key="pk-lf-test", secret_key="sk-lf-official", base_url=os.environ["URL"],
              release="app-release-7", environment="staging")
with lf.start_as_current_observation(name="user-query", as_type="span",
                                      input={"question": "What is the capital of France?"},
                                      metadata={"route": "/ask"}) as root:
    with propagate_attributes(user_id="u1", session_id="s1", tags=["a"],
                              metadata={"tenant": "acme"}, version="app-1.4.2",
                              trace_name="user-query"):
        with lf.start_as_current_observation(name="process-query", as_type="span",
                                              input={"query": "q"}) as span:
            with lf.start_as_current_observation(name="step", as_type="span", level="WARNING",
                                                  status_message="stale") as inner:
                inner.update(output={"documents": ["d1"]})
            span.update(output={"ok": True})
        gen = root.start_observation(name="llm-response", as_type="generation", model="gpt-4o-mini",
                                     model_parameters={"temperature": 0.7},
                                     input=[{"role": "user", "content": "hi"}])
        gen.update(output={"role": "assistant", "content": "Paris."},
                   usage_details={"input": 10, "output": 20, "total": 30},
                   cost_details={"input": 1.5e-06, "output": 1.2e-05, "total": 1.35e-05},
                   completion_start_time=datetime.datetime.now(datetime.timezone.utc),
                   metadata={"provider": "openai"})
        gen.end()
        lf.create_event(name="cache-hit", input={"key": "q"}, metadata={"cache": "redis"})
        root.update(output={"answer": "Paris."})
lf.flush()
lf.shutdown()
"""

#: Attributes only the official SDK sets, about its own span context handling.
OFFICIAL_ONLY = {"langfuse.internal.is_app_root", "langfuse.internal.as_root"}


def _kind(span: dict[str, Any]) -> str:
    if "parentSpanId" not in span:
        return "root"
    return str(span["attrs"]["langfuse.observation.type"])


def _value_kinds(span: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: next(iter(a["value"])) for a in span["attributes"]}


@pytest.mark.skipif(sys.version_info < (3, 10), reason="langfuse 5.0.4 needs Python >= 3.10")
@pytest.mark.timeout(120)
def test_attribute_keys_and_encodings_match_the_official_sdk_5_0_4(
    lf: Langfuse, server: Server, tmp_path: Any
) -> None:
    official_server = Server(tmp_path / "official")
    try:
        run_python(OFFICIAL_DRIVER, clean_env(URL=official_server.url), timeout=90)
        wait_for(lambda: len(official_server.spans()) >= 5, 30, what="the official SDK's spans")
        official = official_server.spans()
    finally:
        official_server.stop()
    assert official and all(s["scope"]["name"] == "langfuse-sdk" for s in official), (
        "the dev server decoded the official SDK's protobuf export"
    )

    # Ours: the same shape of trace.
    trace = lf.trace(
        name="user-query",
        user_id="u1",
        session_id="s1",
        tags=["a"],
        metadata={"tenant": "acme"},
        version="app-1.4.2",
        input={"question": "What is the capital of France?"},
    )
    span = trace.span(name="process-query", input={"query": "q"})
    span.span(name="step", level="WARNING", status_message="stale").end(
        output={"documents": ["d1"]}
    )
    span.end(output={"ok": True})
    gen = trace.generation(
        name="llm-response",
        model="gpt-4o-mini",
        model_parameters={"temperature": 0.7},
        input=[{"role": "user", "content": "hi"}],
        metadata={"provider": "openai"},
    )
    gen.end(
        output={"role": "assistant", "content": "Paris."},
        completion_start_time=1.7e9,
        usage=Usage(
            input=10,
            output=20,
            total=30,
            input_cost=1.5e-06,
            output_cost=1.2e-05,
            total_cost=1.35e-05,
        ),
    )
    trace.event(name="cache-hit", input={"key": "q"}, metadata={"cache": "redis"})
    trace.update(output={"answer": "Paris."})
    assert lf.flush(timeout=30)
    lf_spans = server.spans()

    by_name_official = {s["name"]: s for s in official}
    by_name_ours = {s["name"]: s for s in lf_spans}
    assert {_kind(s) for s in official} == {"root", "span", "generation", "event"}
    assert set(by_name_official) == set(by_name_ours)
    for name, theirs in by_name_official.items():
        mine = by_name_ours[name]
        kind = _kind(theirs)
        assert _kind(mine) == kind, name
        their_kinds = _value_kinds(theirs)
        my_kinds = _value_kinds(mine)
        missing = set(their_kinds) - set(my_kinds) - OFFICIAL_ONLY
        # The official root carries its own span metadata; ours carries the trace's.
        missing -= {
            k for k in missing if kind == "root" and k.startswith("langfuse.observation.metadata.")
        }
        assert not missing, f"{name}: attributes the official SDK sends and we do not: {missing}"
        for key in set(their_kinds) & set(my_kinds):
            assert their_kinds[key] == my_kinds[key], (
                f"{name}.{key}: {their_kinds[key]} vs {my_kinds[key]}"
            )
        for key, value in mine["attrs"].items():
            if key.endswith(
                ("usage_details", "cost_details", "model.parameters", ".input", ".output")
            ):
                assert json.loads(value) == json.loads(theirs["attrs"][key]), f"{name}.{key}"
