"""The pytest plugin users get with langfuse-dq (``langfuse_dq.testing``, entry point
``pytest11``): the ``langfuse_capture`` fixture, run in real pytest sessions via pytester."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import Server, journal_bytes
from langfuse_dq import client as client_module

pytest_plugins = ["pytester"]

APP_MODULE = """
from langfuse_dq import Langfuse, observe

lf = Langfuse()  # built at import, before any test: no keys here, so a disabled client


def handle(q):
    trace = lf.trace(name="request", input={"q": q})
    trace.span(name="retrieve", input={"q": q}).end(output={"docs": 3})
    trace.update(output="ok")
    return "ok"


@observe()  # get_client()
def decorated(x):
    return x * 2
"""

TESTS = """
import os

import app_module
from langfuse_dq import Langfuse, get_client


def test_module_level_client_built_before_the_test(langfuse_capture):
    assert app_module.handle("q1") == "ok"
    span = langfuse_capture.assert_recorded(type="span", name="retrieve", output={"docs": 3})
    trace = langfuse_capture.assert_recorded(type="trace", name="request", output="ok")
    assert span["trace_id"] == trace["id"] and span["input"] == {"q": "q1"}
    assert "end_time" in span


def test_get_client_observe_and_scores(langfuse_capture):
    assert app_module.decorated(21) == 42
    span = langfuse_capture.assert_recorded(type="span", name="decorated", input={"x": 21})
    assert span["output"] == 42
    get_client().score(trace_id=span["trace_id"], name="quality", value=1)
    assert langfuse_capture.last == {**langfuse_capture.last, "type": "score", "value": 1}
    assert langfuse_capture.last_event["type"] == "score-create"
    langfuse_capture.assert_recorded(type="score", name="quality", value=1)


def test_client_constructed_by_the_code_under_test(langfuse_capture):
    lf = Langfuse(public_key="pk-lf-real", secret_key="sk-lf-real",
                  host=os.environ["REAL_HOST"], queue_dir=os.environ["REAL_DIR"])
    trace = lf.trace(name="own", user_id="u7")
    trace.generation(name="llm", model="gpt-4o-mini").end(output="Paris")
    assert lf.flush(timeout=30) is True  # at once: nothing is sent
    langfuse_capture.assert_recorded(type="generation", name="llm", model="gpt-4o-mini")
    langfuse_capture.assert_recorded(type="trace", user_id="u7", count=1)
    langfuse_capture.assert_recorded(name=lambda n: n.startswith("ll"), output="Paris")
    langfuse_capture.assert_not_recorded(level="ERROR")
    assert [e["type"] for e in langfuse_capture.events] == [
        "trace-create", "generation-create", "generation-update"]
    langfuse_capture.clear()
    assert langfuse_capture.events == [] and langfuse_capture.records == []
    lf.trace(name="after-clear")
    assert [r["name"] for r in langfuse_capture.records] == ["after-clear"]


def test_sampling_and_disabled_tracing_are_overridden(langfuse_capture):
    lf = Langfuse(public_key="pk", secret_key="sk", sample_rate=0.0)
    off = Langfuse(public_key="pk", secret_key="sk", enabled=False)
    lf.trace(name="sampled-out")
    off.trace(name="disabled")
    langfuse_capture.assert_recorded(name="sampled-out")
    langfuse_capture.assert_recorded(name="disabled")


def test_a_failing_assertion_lists_what_was_recorded(langfuse_capture):
    app_module.handle("q2")
    langfuse_capture.assert_recorded(type="span", name="rerank", output={"docs": 3})


def test_outside_the_fixture_clients_are_as_they_were():
    assert app_module.lf.enabled is False
    assert get_client().enabled is False
"""


@pytest.fixture
def user_project(
    pytester: pytest.Pytester, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A user's project: an app module with its own client, and tests using the fixture."""
    monkeypatch.setattr(client_module, "_default", None)  # the inner session's default client
    monkeypatch.setenv("REAL_HOST", server.url)
    monkeypatch.setenv("REAL_DIR", str(tmp_path / "real-queue"))
    pytester.makepyfile(app_module=APP_MODULE, test_app=TESTS)
    return tmp_path / "real-queue"


def test_langfuse_capture_fixture_in_a_pytest_session(
    pytester: pytest.Pytester, user_project: Path, server: Server
) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_failing_assertion_lists_what_was_recorded*",
            "*langfuse_capture: nothing recorded matches type='span', name='rerank', "
            "output={'docs': 3}",
            "recorded (2):",
            "  trace 'request' id=* input={'q': 'q2'} output='ok'",
            "  span 'retrieve' id=* input={'q': 'q2'} output={'docs': 3}   "
            "<- differs in name: got 'retrieve'",
        ]
    )
    # The client the code built with real settings wrote nothing there and sent nothing.
    assert not (user_project / "journal").exists() or journal_bytes(str(user_project)) == b""
    assert server.records() == []


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_one="""
        def test_capture(langfuse_capture):
            from langfuse_dq import get_client
            get_client().trace(name="hello")
            langfuse_capture.assert_recorded(type="trace", name="hello")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    disabled = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:langfuse_dq")
    disabled.stdout.fnmatch_lines(["*fixture 'langfuse_capture' not found*"])
    assert os.environ.get("LANGFUSE_DQ_DIR") is None
