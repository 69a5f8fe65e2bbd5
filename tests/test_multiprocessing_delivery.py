"""multiprocessing pools, fork and spawn: what the children record is delivered end to end
(test_fork_ownership.py checks that it reaches the queue on disk; here it reaches the server)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

import helpers
from helpers import KEYS, Server, delivered_trace_names, spans_by_trace, stop_flusher, wait_for
from langfuse_dq import Langfuse


@pytest.fixture
def fork_client(queue_dir: str, server: Server) -> Iterator[Langfuse]:
    """A client that autospawns a flusher delivering to the test server, shared with children."""
    client = Langfuse(
        public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
        secret_key=KEYS["LANGFUSE_SECRET_KEY"],
        host=server.url,
        queue_dir=queue_dir,
        flush_interval=0.2,
    )
    helpers.FORK_CLIENT = client
    yield client
    helpers.FORK_CLIENT = None
    client.shutdown()
    stop_flusher(queue_dir)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fork_pool_children_traces_are_delivered(
    fork_client: Langfuse, server: Server, queue_dir: str
) -> None:
    n = 200
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pids = pool.map(helpers.record_in_child, range(n))
    assert len(set(pids)) > 1
    # Events of the children, all written before this flush, are delivered when it returns.
    assert fork_client.flush(timeout=60) is True
    names = delivered_trace_names(server)
    for i in range(n):
        assert names.get(f"child-{i}") == {f"child-{i}", f"child-{i}-span"}, i
    spans = [s for group in spans_by_trace(server).values() for s in group]
    assert len(spans) == 2 * n and len({s["spanId"] for s in spans}) == 2 * n


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_spawn_pool_children_traces_are_delivered(
    queue_dir: str, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANGFUSE_DQ_DIR", queue_dir)
    monkeypatch.setenv("LANGFUSE_BASE_URL", server.url)
    monkeypatch.setenv("LANGFUSE_FLUSH_INTERVAL", "0.2")
    n = 40
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pids = pool.map(helpers.record_trace_with_default_client, range(n))
    assert len(set(pids)) == 2
    # The children started a flusher (autospawn); the parent waits for it to deliver.
    wait_for(
        lambda: all(
            delivered_trace_names(server).get(f"spawned-{i}")
            == {f"spawned-{i}", f"spawned-{i}-span", f"spawned-{i}-gen"}
            for i in range(n)
        ),
        60,
        interval=0.3,
        what="every spawned child's trace delivered",
    )
    spans = [s for group in spans_by_trace(server).values() for s in group]
    assert len(spans) == 3 * n and len({s["spanId"] for s in spans}) == 3 * n
    stop_flusher(queue_dir)
