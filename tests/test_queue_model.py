"""A stateful property test of the queue against a simple model.

Hypothesis drives random interleavings of enqueues, flusher rounds, server failures (503),
poison events (rejected per request, so bisected and quarantined), flusher crashes (the
process dies without committing, possibly with a request on the wire) and graceful stops.
The model: every accepted event ends delivered or quarantined, never lost, and no span is
delivered twice unless a crash happened.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from helpers import KEYS, Server
from langfuse_dq import Langfuse
from langfuse_dq.config import resolve_config
from langfuse_dq.flusher import Flusher
from langfuse_dq.quarantine import list_batches, load_batch
from langfuse_dq.queuedir import open_queue_dir

SERVER: Optional[Server] = None


def crash(flusher: Flusher) -> None:
    """What a kill -9 leaves behind: nothing committed since the last commit, a request that
    may or may not have reached the server, a lock the kernel releases."""
    executor = flusher._executor
    if executor is not None:
        executor.shutdown(wait=True)  # a request on the wire still arrives: sent, never acked
    if flusher.state is not None:
        flusher.state.close()
        flusher.state = None
    flusher.lock.release(force=True)


class QueueModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert SERVER is not None
        self.server = SERVER
        self.tag = uuid.uuid4().hex[:8]
        self.workdir = tempfile.mkdtemp(prefix="dq-model-")
        self.queue_dir = str(Path(self.workdir) / "queue")
        self.config = resolve_config(
            public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
            secret_key=KEYS["LANGFUSE_SECRET_KEY"],
            host=self.server.url,
            queue_dir=self.queue_dir,
            autospawn=False,
            flush_interval=0.05,
            batch_size=7,
        )
        self.lf = Langfuse(
            public_key=self.config.public_key,
            secret_key=self.config.secret_key,
            host=self.config.host,
            queue_dir=self.queue_dir,
            autospawn=False,
        )
        self.written: set[str] = set()
        self.poisoned: set[str] = set()
        self.flusher: Optional[Flusher] = None
        self.crashes = 0
        self.counter = 0
        self.server.faults(reset=True)
        self.server.faults(reject_names=[f"{self.tag}-poison"])

    def _name(self, kind: str) -> str:
        self.counter += 1
        return f"{self.tag}-{kind}-{self.counter}"

    @rule(n=st.integers(min_value=1, max_value=15))
    def enqueue(self, n: int) -> None:
        for _ in range(n):
            name = self._name("ok")
            trace = self.lf.trace(name=f"trace-{name}")
            trace.span(name=name).end()
            self.written.add(name)

    @rule()
    def enqueue_poison(self) -> None:
        name = self._name("poison")
        self.lf.trace(name=f"trace-{name}").span(name=name).end()
        self.poisoned.add(name)

    @rule(count=st.integers(min_value=1, max_value=3))
    def server_fails(self, count: int) -> None:
        self.server.faults(status=503, count=count)

    @rule()
    def flusher_round(self) -> None:
        if self.flusher is None:
            self.flusher = Flusher(self.config, open_queue_dir(self.queue_dir))
            assert self.flusher.acquire(timeout=5)
        self.flusher.run(until_drained=True, deadline=time.monotonic() + 0.3)

    @rule()
    def flusher_crashes(self) -> None:
        if self.flusher is not None:
            crash(self.flusher)
            self.flusher = None
            self.crashes += 1

    @rule()
    def flusher_stops(self) -> None:
        if self.flusher is not None:
            self.flusher.release()
            self.flusher = None

    def teardown(self) -> None:
        try:
            if self.flusher is not None:
                self.flusher.release()
            self.server.faults(status=503, count=0)
            final = Flusher(self.config, open_queue_dir(self.queue_dir))
            assert final.acquire(timeout=5)
            try:
                final.run(until_drained=True, deadline=time.monotonic() + 30)
            finally:
                final.release()
            self._check()
        finally:
            self.lf.shutdown()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _check(self) -> None:
        spans = [s for s in self.server.spans() if s["name"].startswith(self.tag)]
        received = collections.Counter(s["name"] for s in spans)
        missing = self.written - set(received)
        assert not missing, f"accepted events lost: {sorted(missing)[:5]}"
        assert not self.poisoned & set(received), "a rejected event counted as delivered"
        qd = open_queue_dir(self.queue_dir, create=False)
        batches, _ = list_batches(qd)
        quarantined = {
            e["body"].get("name") for b in batches for e in load_batch(qd, b["id"])["events"]
        }
        assert self.poisoned <= quarantined, "every rejected event is in quarantine"
        if self.crashes == 0:
            twice = [name for name, n in received.items() if n > 1]
            assert not twice, f"delivered twice without a crash: {twice[:5]}"


@pytest.mark.timeout(600)
def test_queue_model_random_interleavings(server: Server) -> None:
    global SERVER
    SERVER = server
    try:
        run_state_machine_as_test(
            QueueModel,
            settings=settings(
                max_examples=12,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        SERVER = None
