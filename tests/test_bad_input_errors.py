"""Programming errors get a clear TypeError/ValueError naming the field, and nothing is queued."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from helpers import journal_events
from langfuse_dq import Langfuse, Usage


@pytest.fixture
def lf(queue_dir: str) -> Iterator[Langfuse]:
    client = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    yield client
    client.shutdown()


@pytest.mark.parametrize("call", ["span", "generation", "event", "score"])
def test_low_level_calls_without_trace_id_raise_value_error(lf: Langfuse, call: str) -> None:
    kwargs = {"name": "x", "value": 1} if call == "score" else {"name": "x"}
    with pytest.raises(ValueError, match="trace_id"):
        getattr(lf, call)(**kwargs)


@pytest.mark.parametrize(
    ("call", "kwargs", "error", "field"),
    [
        ("trace", {"nmae": "typo"}, TypeError, "nmae"),
        ("trace", {"name": 42}, TypeError, "name"),
        ("trace", {"tags": "a,b"}, TypeError, "tags"),
        ("trace", {"tags": ["a", 1]}, TypeError, "tags"),
        ("trace", {"public": "yes"}, TypeError, "public"),
        ("trace", {"timestamp": "yesterday"}, ValueError, "timestamp"),
        ("trace", {"timestamp": object()}, TypeError, "timestamp"),
        ("trace", {"user_id": ["u"]}, TypeError, "user_id"),
        ("trace", {"id": ""}, ValueError, "id"),
        ("trace", {"id": 1.5}, TypeError, "id"),
        ("span", {"trace_id": "t", "level": "FATAL"}, ValueError, "level"),
        ("span", {"trace_id": "t", "status_message": 3}, TypeError, "status_message"),
        ("span", {"trace_id": "t", "start_time": "noon"}, ValueError, "start_time"),
        ("span", {"trace_id": "t", "model": "gpt"}, TypeError, "model"),
        (
            "span",
            {"trace_id": "t", "parent_observation_id": 2.5},
            TypeError,
            "parent_observation_id",
        ),
        ("generation", {"trace_id": "t", "model_parameters": [1]}, TypeError, "model_parameters"),
        (
            "generation",
            {"trace_id": "t", "usage_details": {"input": -1}},
            ValueError,
            "usage_details.input",
        ),
        (
            "generation",
            {"trace_id": "t", "usage_details": {"input": 1.5}},
            ValueError,
            "usage_details.input",
        ),
        (
            "generation",
            {"trace_id": "t", "cost_details": {"total": "1$"}},
            TypeError,
            "cost_details.total",
        ),
        (
            "generation",
            {"trace_id": "t", "cost_details": {"total": -0.1}},
            ValueError,
            "cost_details.total",
        ),
        ("generation", {"trace_id": "t", "usage": 30}, TypeError, "usage"),
        ("generation", {"trace_id": "t", "usage": Usage(input=-2)}, ValueError, "usage.input"),
        ("generation", {"trace_id": "t", "prompt_version": "3"}, TypeError, "prompt_version"),
        ("event", {"trace_id": "t", "end_time": dt.datetime.now()}, TypeError, "end_time"),
        ("score", {"trace_id": "t", "value": 1}, ValueError, "name"),
        ("score", {"trace_id": "t", "name": "n"}, ValueError, "value"),
        ("score", {"trace_id": "t", "name": "n", "value": [1]}, TypeError, "value"),
        ("score", {"trace_id": "t", "name": "n", "value": float("nan")}, ValueError, "value"),
        (
            "score",
            {"trace_id": "t", "name": "n", "value": 1, "data_type": "TEXT"},
            ValueError,
            "data_type",
        ),
        (
            "score",
            {"trace_id": "t", "name": "n", "value": "good", "data_type": "NUMERIC"},
            TypeError,
            "value",
        ),
        ("score", {"trace_id": "t", "name": "n", "value": 1, "comment": 5}, TypeError, "comment"),
        ("score", {"trace_id": "t", "name": "n", "value": 1, "colour": "red"}, TypeError, "colour"),
    ],
)
def test_bad_arguments_raise_naming_the_field_and_queue_nothing(
    lf: Langfuse, queue_dir: str, call: str, kwargs: dict[str, object], error: type, field: str
) -> None:
    with pytest.raises(error, match=field):
        getattr(lf, call)(**kwargs)
    assert journal_events(queue_dir) == []


def test_stateful_objects_reject_unknown_keywords_and_attributes(lf: Langfuse) -> None:
    trace = lf.trace(name="t")
    span = trace.span(name="s")
    with pytest.raises(TypeError, match="colour"):
        span.update(colour="red")
    with pytest.raises(TypeError, match="colour"):
        span.end(colour="red")
    with pytest.raises(AttributeError, match="colour"):
        span.colour = "red"  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        span.id = "0123456789abcdef"  # type: ignore[misc]
    with pytest.raises(TypeError, match="trace_id"):
        trace.span(name="x", trace_id="other")
    with pytest.raises(AttributeError, match="model"):
        span.model = "gpt"  # type: ignore[attr-defined]
    gen = trace.generation(name="g")
    with pytest.raises(ValueError, match="level"):
        gen.level = "LOUD"
    with pytest.raises(TypeError, match="usage"):
        gen.usage = "lots"


def test_update_by_id_requires_ids(lf: Langfuse) -> None:
    with pytest.raises(ValueError, match="trace_id"):
        lf.update_span("0123456789abcdef", output=1)
    with pytest.raises(ValueError, match="id"):
        lf.update_generation(None, trace_id="t")
    with pytest.raises(TypeError, match="color"):
        lf.update_span("0123456789abcdef", trace_id="t", color=1)
