"""A writer killed with SIGKILL at a random moment loses nothing whose call returned."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import time

import pytest

from helpers import KEYS, clean_env, journal_events, python_script, stop_proc

WRITER = """
import os, sys
from langfuse_dq import Langfuse
lf = Langfuse(autospawn=False, host="http://127.0.0.1:9")
r = sys.argv[1]
i = 0
while True:
    trace = lf.trace(name=f"{r}-{i}", input={"i": i})
    span = trace.span(name=f"{r}-{i}-span")
    span.end(output="x" * (i % 300))
    # Logged only after the calls returned; a pipe write survives the writer's death.
    os.write(1, f"{r}-{i}\\n".encode())
    i += 1
"""


def _read_available(proc: subprocess.Popen[bytes], buffer: bytearray) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buffer.extend(chunk)


@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_never_loses_an_acknowledged_event(queue_dir: str) -> None:
    rng = random.Random(20261126)
    env = clean_env(LANGFUSE_DQ_DIR=queue_dir, **KEYS)
    acknowledged: list[str] = []
    for round_no in range(8):
        proc = subprocess.Popen(
            [*python_script(WRITER), f"r{round_no}"], env=env, stdout=subprocess.PIPE
        )
        output = bytearray()
        try:
            deadline = time.monotonic() + rng.uniform(0.3, 1.2)
            while time.monotonic() < deadline:
                _read_available(proc, output)
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.stdout is not None
            output.extend(proc.stdout.read())
            proc.wait(timeout=10)
        finally:
            stop_proc(proc)
        assert proc.returncode == -signal.SIGKILL
        lines = output.decode().split("\n")
        complete = [line for line in lines[:-1] if line]
        assert len(complete) > 20, "the writer had time to write something before the kill"
        acknowledged.extend(complete)

    stored_names = {
        e["body"].get("name") for e in journal_events(queue_dir) if e["type"] == "trace-create"
    }
    missing = [name for name in acknowledged if name not in stored_names]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    ended = {
        e["body"]["id"]
        for e in journal_events(queue_dir)
        if e["type"] == "span-update" and "endTime" in e["body"]
    }
    assert len(ended) >= len(acknowledged)
