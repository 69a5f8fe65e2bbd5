"""The flusher killed with SIGKILL at random moments while draining: nothing is lost."""

from __future__ import annotations

import collections
import os
import random
import signal
import time

import pytest

from helpers import (
    Server,
    fill_queue,
    flusher_pid,
    queue_stats,
    start_flusher,
    stop_proc,
    wait_for,
)


@pytest.mark.timeout(300)
def test_sigkill_the_flusher_five_times_while_it_drains_20000_events(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_FLUSH_INTERVAL": "0.2", "LANGFUSE_BATCH_SIZE": "200"}
    traces = 2500  # 2500 x (trace + 3 spans x 2 + score) = 20,000 events
    written = fill_queue(env, traces, spans_per_trace=3)
    assert written == 20_000
    rng = random.Random(5)
    server.faults(delay=0.03)  # stretch the drain so that every kill lands mid-drain
    kills = 0
    for _ in range(5):
        proc = start_flusher(env, queue_dir, idle_exit=False)
        try:
            wait_for(lambda: flusher_pid(queue_dir) == proc.pid, 30, what="the flusher to start")  # noqa: B023
            time.sleep(rng.uniform(0.2, 0.9))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
        finally:
            stop_proc(proc)
    assert kills == 5
    sent_before_the_last_run = len(server.spans())
    assert 0 < sent_before_the_last_run < traces * 4, "the kills happened while it drained"
    server.faults(delay=0)
    proc = start_flusher(env, queue_dir, idle_exit=True)
    try:
        wait_for(
            lambda: queue_stats(queue_dir)["pending"] == 0,
            120,
            interval=0.5,
            what="the queue to drain",
        )
    finally:
        stop_proc(proc)

    spans = server.spans()
    ids = collections.Counter(s["spanId"] for s in spans)
    names = {s["name"] for s in spans}
    expected_spans = {f"t-{i}-{j}" for i in range(traces) for j in range(3)}
    assert expected_spans <= names, "every span arrived"
    assert {f"t-{i}" for i in range(traces)} <= names, "every trace's root span arrived"
    scores = collections.Counter(
        e["body"]["id"] for e in server.events() if e["type"] == "score-create"
    )
    assert len(scores) == traces
    duplicates = sum(n - 1 for n in ids.values()) + sum(n - 1 for n in scores.values())
    stats = queue_stats(queue_dir)
    print(
        f"\nduplicates after 5 SIGKILLs: {duplicates} "
        f"(duplicate_risk counted: {stats['duplicate_risk']})"
    )
    assert stats["delivered"] == written
    assert stats["pending"] == 0 and stats["quarantined"] == 0
    assert duplicates <= stats["duplicate_risk"], "every duplicate was counted as a risk"
    assert os.listdir(os.path.join(queue_dir, "journal")) == [], "consumed segments are deleted"
