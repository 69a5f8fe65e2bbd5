"""Delivery through server trouble: outages, rate limits, rejections, bad keys, v4 servers."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    KEYS,
    Server,
    fill_queue,
    python_script,
    queue_stats,
    start_flusher,
    stop_proc,
    wait_for,
)
from langfuse_dq import Langfuse
from langfuse_dq.quarantine import list_batches, load_batch
from langfuse_dq.queuedir import open_queue_dir

WRITER = """
import json, sys, time
from langfuse_dq import Langfuse
lf = Langfuse(flush_interval=0.2)
tag, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
latencies = []
start = time.perf_counter()
i = 0
while time.perf_counter() - start < seconds:
    due = start + i / rate
    while time.perf_counter() < due:
        time.sleep(0.0005)
    t0 = time.perf_counter()
    trace = lf.trace(name=f"{tag}-{i}", input={"i": i})
    span = trace.span(name=f"{tag}-{i}-span")
    span.end(output="ok")
    latencies.append(time.perf_counter() - t0)
    i += 1
lf.shutdown()
latencies.sort()
n = len(latencies)
report = {"n": i, "p50": latencies[n // 2], "p99": latencies[int(n * 0.99)], "max": latencies[-1]}
print(json.dumps(report))
"""


@pytest.mark.timeout(240)
def test_a_15_second_503_outage_while_writers_keep_going_loses_nothing(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_FLUSH_INTERVAL": "0.2"}
    server.faults(status=503, fail_for=15)
    outage_started = time.monotonic()
    writers = [
        subprocess.Popen(
            [*python_script(WRITER), f"w{k}", "20", "100"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    try:
        reports = []
        for proc in writers:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in writers:
            stop_proc(proc)
    assert time.monotonic() - outage_started > 15
    total = sum(r["n"] for r in reports)
    wait_for(
        lambda: queue_stats(queue_dir)["pending"] == 0,
        90,
        interval=0.5,
        what="drain after the outage",
    )
    stats = queue_stats(queue_dir)
    spans = server.spans()
    names = collections.Counter(s["name"] for s in spans)
    expected = {f"w{k}-{i}-span" for k, r in enumerate(reports) for i in range(r["n"])}
    assert expected <= set(names), f"{len(expected - set(names))} spans missing"
    assert all(names[n] == 1 for n in expected), "a 503 accepted nothing: no duplicates"
    assert stats["delivered"] == total * 3
    assert stats["retried"] > 0 and stats["quarantined"] == 0 and stats["dropped"] == 0
    assert server.counts()["failed"] > 0
    print(f"\nenqueue latency (trace+span+end) during the outage: {reports}")
    for report in reports:
        # Enqueue never waits on the network: even the slowest call is far below any timeout.
        assert report["max"] < 1.0


def test_poison_spans_are_bisected_out_and_quarantined_with_the_server_message(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    server.faults(reject_names=["poison"])
    env = {**client_env, "LANGFUSE_BATCH_SIZE": "100"}
    lf = Langfuse(**_kw(env))
    for i in range(60):
        trace = lf.trace(name=f"t-{i}")
        name = f"poison-{i}" if i % 20 == 7 else f"good-{i}"
        trace.span(name=name).end()
        trace.score(name="poison-score" if i == 3 else "fine", value=1)
    assert lf.flush(timeout=60) is False, "flush reports that something went to quarantine"
    lf.shutdown()
    names = {s["name"] for s in server.spans()}
    assert {f"good-{i}" for i in range(60) if i % 20 != 7} <= names
    assert not any(n.startswith("poison") for n in names)
    qd = open_queue_dir(queue_dir, create=False)
    batches, unreadable = list_batches(qd)
    assert not unreadable
    quarantined = [e for b in batches for e in load_batch(qd, b["id"])["events"]]
    q_names = {e["body"].get("name") for e in quarantined}
    assert {"poison-7", "poison-27", "poison-47", "poison-score"} <= q_names
    reasons = " ".join(str(b["reason"]) for b in batches)
    assert "rejected (test marker)" in reasons or "test marker" in reasons
    assert {b["status"] for b in batches} == {400}
    stats = queue_stats(queue_dir)
    assert stats["quarantined"] == len(quarantined) == 3 * 2 + 1
    assert stats["pending"] == 0
    for path in Path(queue_dir, "quarantine").iterdir():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert KEYS["LANGFUSE_SECRET_KEY"] not in path.read_text()


def test_ingestion_transport_against_a_v4_events_only_server_quarantines_never_delivers(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    server.faults(events_only=True)
    lf = Langfuse(**_kw(client_env), transport="ingestion")
    trace = lf.trace(name="legacy")
    trace.span(name="s").end()
    trace.score(name="kept", value=1)
    assert lf.flush(timeout=30) is False
    lf.shutdown()
    stats = queue_stats(queue_dir)
    assert stats["delivered"] == 1, "only the score was accepted"
    assert stats["quarantined"] == 3 and stats["pending"] == 0
    qd = open_queue_dir(queue_dir, create=False)
    (batch,) = list_batches(qd)[0]
    record = load_batch(qd, batch["id"])
    assert {e["type"] for e in record["events"]} == {"trace-create", "span-create", "span-update"}
    assert all(err["message"] == "Event type not accepted" for err in record["errors"].values())
    assert [e["body"]["name"] for e in server.events()] == ["kept"]


def test_429_with_retry_after_is_honoured(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    server.faults(status=429, count=1, retry_after="2")
    lf = Langfuse(**_kw(client_env))
    lf.trace(name="rate-limited").span(name="s").end()
    started = time.monotonic()
    assert lf.flush(timeout=30) is True
    assert time.monotonic() - started >= 1.9, "waited as long as Retry-After said"
    assert {s["name"] for s in server.spans()} == {"rate-limited", "s"}
    assert queue_stats(queue_dir)["retried"] >= 1


def test_bad_keys_keep_the_data_and_show_in_stats_until_fixed(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    server.faults(keys=["pk-other", "sk-other"])
    lf = Langfuse(**_kw(client_env))
    lf.trace(name="kept-through-401").span(name="s").end()
    assert lf.flush(timeout=3) is False
    stats = wait_for(
        lambda: (s := queue_stats(queue_dir))["auth_error"] and s, 10, what="auth error in stats"
    )
    assert "401" in stats["auth_error"] and stats["pending"] > 0 and stats["delivered"] == 0
    assert server.spans() == []
    server.faults(keys=[KEYS["LANGFUSE_PUBLIC_KEY"], KEYS["LANGFUSE_SECRET_KEY"]])
    assert lf.flush(timeout=30) is True
    assert {s["name"] for s in server.spans()} == {"kept-through-401", "s"}
    lf.shutdown()


def test_flush_never_hangs_when_the_server_is_down(queue_dir: str, tmp_path: Path) -> None:
    lf = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        flush_interval=0.2,
    )
    lf.trace(name="nobody listens").span(name="s").end()
    started = time.monotonic()
    assert lf.flush(timeout=1.5) is False
    assert time.monotonic() - started < 3
    started = time.monotonic()
    lf.shutdown()
    assert time.monotonic() - started < 1.0, "shutdown is bounded"
    assert queue_stats(queue_dir)["pending"] == 3, "undelivered events stay on disk"


def test_oversize_request_413_is_split_and_a_single_oversize_span_quarantined(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    lf = Langfuse(**_kw(client_env))
    for i in range(10):
        lf.trace(name=f"t{i}").span(name=f"s{i}", input="x" * 1000).end()
    server.faults(status=413, count=3)
    assert lf.flush(timeout=30) is True
    assert {f"s{i}" for i in range(10)} <= {s["name"] for s in server.spans()}
    assert queue_stats(queue_dir)["quarantined"] == 0
    lf.shutdown()


def test_an_observation_left_open_by_a_dead_writer_is_exported_as_a_warning(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    code = """
    import os
    from langfuse_dq import Langfuse
    lf = Langfuse(autospawn=False)
    trace = lf.trace(name="crashed-request")
    trace.span(name="done").end()
    trace.span(name="never-ended", input={"q": 1})
    os._exit(1)  # dies without end(), like an OOM kill
    """
    proc = subprocess.Popen(python_script(code), env=client_env)
    try:
        assert proc.wait(timeout=30) == 1
    finally:
        stop_proc(proc)
    flusher = start_flusher(client_env, queue_dir)
    try:
        wait_for(lambda: len(server.spans()) == 3, 30, what="three spans")
    finally:
        stop_proc(flusher)
    spans = {s["name"]: s for s in server.spans()}
    open_span = spans["never-ended"]["attrs"]
    assert open_span["langfuse.observation.level"] == "WARNING"
    assert "exited before end()" in open_span["langfuse.observation.status_message"]
    assert json.loads(open_span["langfuse.observation.input"]) == {"q": 1}
    assert "langfuse.observation.level" not in spans["done"]["attrs"]
    assert spans["crashed-request"]["attrs"]["langfuse.trace.name"] == "crashed-request"


def _kw(env: dict[str, str]) -> dict[str, object]:
    return {
        "public_key": env["LANGFUSE_PUBLIC_KEY"],
        "secret_key": env["LANGFUSE_SECRET_KEY"],
        "host": env["LANGFUSE_BASE_URL"],
        "queue_dir": env["LANGFUSE_DQ_DIR"],
        "flush_interval": 0.2,
    }


def test_fill_helper_counts_events(queue_dir: str, client_env: dict[str, str]) -> None:
    assert fill_queue(client_env, 3, spans_per_trace=2) == 3 * 6
    assert queue_stats(queue_dir)["pending"] == 18
    assert os.path.isdir(os.path.join(queue_dir, "journal"))
