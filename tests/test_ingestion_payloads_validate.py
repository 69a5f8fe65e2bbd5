"""What we send to /api/public/ingestion validates against the official SDK's own models.

The pydantic models of the legacy ingestion events ship with ``langfuse==4.18.0`` (its
``langfuse.api`` package). They cannot live beside langfuse 5 in the test environment, so the
test builds a small virtualenv for them once (cached) and validates there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from helpers import KEYS, Server
from langfuse_dq import Langfuse, Usage

CACHE = Path(os.environ.get("LANGFUSE_DQ_TEST_CACHE", Path.home() / ".cache" / "langfuse-dq-tests"))
VALIDATOR = """
import json, sys
from langfuse.api.core.pydantic_utilities import parse_obj_as
from langfuse.api.ingestion.types.ingestion_event import IngestionEvent
problems = []
for event in json.load(sys.stdin):
    try:
        model = parse_obj_as(IngestionEvent, event)
    except Exception as exc:
        problems.append(f"{event.get('type')} {event.get('id')}: {exc}")
        continue
    extra = getattr(model.body, "model_extra", None) or {}
    if extra:
        problems.append(f"{event['type']}: fields the model does not know: {sorted(extra)}")
print(json.dumps(problems))
"""


def _python_310_or_newer() -> Optional[str]:
    """An interpreter for the side virtualenv: langfuse 4.18 needs Python >= 3.10, which the
    tests themselves do not (they also run on 3.9)."""
    if sys.version_info >= (3, 10):
        return sys.executable
    for name in ("python3.13", "python3.12", "python3.11", "python3.10", "python3"):
        found = shutil.which(name)
        if not found:
            continue
        probe = subprocess.run(
            [found, "-c", "import sys; print(sys.version_info >= (3, 10))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return found
    return None


@pytest.fixture(scope="session")
def langfuse_418_python() -> str:
    """A Python with ``langfuse==4.18.0`` installed (built once, then reused)."""
    base = _python_310_or_newer()
    if base is None:
        pytest.skip("langfuse 4.18.0 needs Python >= 3.10 and none is installed here")
    target = CACHE / "venv-langfuse-4.18.0"
    python = target / "bin" / "python"
    ready = python.exists() and (
        subprocess.run([str(python), "-c", "import langfuse.api"], check=False).returncode == 0
    )
    if not ready:
        subprocess.run([base, "-m", "venv", "--clear", str(target)], check=True, timeout=300)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "langfuse==4.18.0"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(
                f"cannot install langfuse==4.18.0 from the package index: {result.stderr[-500:]}"
            )
    return str(python)


@pytest.mark.timeout(600)
def test_every_kind_of_event_we_send_validates_against_langfuse_4_18_models(
    langfuse_418_python: str, queue_dir: str, server: Server
) -> None:
    lf = Langfuse(
        public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
        secret_key=KEYS["LANGFUSE_SECRET_KEY"],
        host=server.url,
        queue_dir=queue_dir,
        transport="ingestion",
        flush_interval=0.2,
        release="r1",
        environment="staging",
    )
    trace = lf.trace(
        name="q",
        user_id="u",
        session_id="s",
        tags=["a"],
        metadata={"m": 1},
        input={"x": 1},
        version="v",
        public=True,
    )
    trace.update(output={"y": 2})
    span = trace.span(
        name="s",
        input="in",
        metadata={"k": "v"},
        level="WARNING",
        status_message="meh",
        version="2",
    )
    span.update(output={"partial": True})
    span.end(output="out")
    gen = trace.generation(
        name="g",
        model="gpt-4o-mini",
        model_parameters={"temperature": 0.7, "max_tokens": 10, "stop": ["\\n"]},
        input=[{"role": "user", "content": "hi"}],
        prompt_name="p",
        prompt_version=3,
        completion_start_time=1.7e9,
    )
    gen.end(
        output="hello",
        usage=Usage(input=10, output=20, total=30, input_cost=0.1, output_cost=0.2, total_cost=0.3),
    )
    lf.update_generation(
        gen.id, trace_id=trace.id, usage_details={"input": 1}, cost_details={"total": 0.5}
    )
    trace.event(name="e", input={"k": 1}, level="DEBUG")
    trace.score(name="n", value=0.5, comment="c")
    trace.score(name="b", value=True)
    span.score(name="c", value="good", data_type="CATEGORICAL", metadata={"why": "x"})
    assert lf.flush(timeout=60) is True
    lf.shutdown()
    received = server.events()
    assert {e["type"] for e in received} == {
        "trace-create",
        "span-create",
        "span-update",
        "generation-create",
        "generation-update",
        "event-create",
        "score-create",
    }
    result = subprocess.run(
        [langfuse_418_python, "-c", VALIDATOR],
        input=json.dumps(received),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    problems = json.loads(result.stdout)
    assert problems == []
    # Sent verbatim: what arrived is what was queued (same ids, same timestamps).
    for event in received:
        assert not any(key.startswith("_") for key in event)
        assert event["timestamp"].endswith("Z")


def test_the_validator_rejects_a_malformed_event(langfuse_418_python: str) -> None:
    bad = [
        {
            "id": "1",
            "type": "trace-create",
            "timestamp": "2026-11-26T00:00:00Z",
            "body": {"userId": 5},
        },
        {
            "id": "2",
            "type": "span-create",
            "timestamp": "2026-11-26T00:00:00Z",
            "body": {"userID": "u"},
        },
    ]
    result = subprocess.run(
        [langfuse_418_python, "-c", VALIDATOR],
        input=json.dumps(bad),
        capture_output=True,
        text=True,
        check=True,
    )
    problems = json.loads(result.stdout)
    assert len(problems) == 2
    assert "user_id" in problems[0] and "userID" in problems[1]
