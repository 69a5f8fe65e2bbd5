"""The wall clock jumping backwards or forwards in a writer neither loses, reorders, duplicates
nor delays events, and retry timing does not depend on the wall clock."""

from __future__ import annotations

import collections
import json
import time

from helpers import Server, queue_stats, run_python, stop_proc
from langfuse_dq.transport.http import Backoff

JUMPING_WRITER = """
import time
real = time.time_ns
offset = [0]
time.time_ns = lambda: real() + offset[0]
from langfuse_dq import Langfuse
lf = Langfuse(autospawn=False)
HOUR = 3600 * 10**9
for i in range(90):
    if i == 30:
        offset[0] = -HOUR      # the clock jumps back an hour
    if i == 60:
        offset[0] = +HOUR      # and then an hour ahead
    trace = lf.trace(name=f"t{i}", input={"i": i})
    span = trace.span(name=f"s{i}")
    if i in (15, 45):
        offset[0] = +HOUR if i == 15 else 0   # jumps between a span's start and its end
    span.end(output={"i": i})
    trace.update(output={"done": i})
lf.shutdown()
"""


def test_clock_jumps_in_a_writer_lose_nothing_and_delay_nothing(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0", "LANGFUSE_FLUSH_INTERVAL": "0.2"}
    run_python(JUMPING_WRITER, env)
    started = time.monotonic()
    run_python(
        """
        from langfuse_dq import Langfuse
        assert Langfuse(autospawn=False).flush(timeout=60)
        """,
        env,
        timeout=90,
    )
    assert time.monotonic() - started < 30, "events stamped an hour ahead were not held back"
    spans = server.spans()
    names = collections.Counter(s["name"] for s in spans)
    assert {f"s{i}" for i in range(90)} | {f"t{i}" for i in range(90)} == set(names)
    assert all(n == 1 for n in names.values()), "nothing duplicated"
    for span in spans:
        assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
        if span["name"].startswith("s"):
            i = int(span["name"][1:])
            assert json.loads(span["attrs"]["langfuse.observation.output"]) == {"i": i}
    roots = {s["name"]: s for s in spans if s["name"].startswith("t")}
    for i in range(90):
        output = json.loads(roots[f"t{i}"]["attrs"]["langfuse.observation.output"])
        assert output == {"done": i}, "the trace update was folded in whatever the clock did"
    stats = queue_stats(queue_dir)
    assert stats["pending"] == 0 and stats["dropped"] == 0


JUMPING_FLUSHER = """
import sys, threading, time
real_time, real_ns = time.time, time.time_ns
offset = [0.0]
time.time = lambda: real_time() + offset[0]
time.time_ns = lambda: real_ns() + int(offset[0] * 1e9)
def jump():
    time.sleep(1.0)
    offset[0] = -3600.0            # an hour back while the flusher is backing off
threading.Thread(target=jump, daemon=True).start()
from langfuse_dq.flusher import main
sys.exit(main(["--dir", sys.argv[1], "--exit-when-idle"]))
"""


def test_a_clock_jump_in_the_flusher_does_not_stretch_its_backoff(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0", "LANGFUSE_DQ_IDLE_EXIT": "1"}
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse(autospawn=False)
        lf.trace(name="during-a-jump").span(name="s").end()
        lf.shutdown()
        """,
        env,
    )
    server.faults(status=503, count=3)
    started = time.monotonic()
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", JUMPING_FLUSHER, queue_dir], env=env, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert {s["name"] for s in server.spans()} == {"during-a-jump", "s"}
    assert time.monotonic() - started < 20, "the backoff is not a wall-clock deadline"
    assert queue_stats(queue_dir)["retried"] >= 3
    assert Backoff(0.5, 30).next(retry_after=2.0) == 2.0


STEPPED_BACK_WORKER = """
import sys, threading, time
real_time, real_ns = time.time, time.time_ns
offset = [0.0]
time.time = lambda: real_time() + offset[0]
time.time_ns = lambda: real_ns() + int(offset[0] * 1e9)
def step_back():
    time.sleep(1.0)
    offset[0] = -3600.0            # the flusher's clock is stepped back an hour
    print("stepped", flush=True)
threading.Thread(target=step_back, daemon=True).start()
from langfuse_dq.flusher import main
sys.exit(main(["--dir", sys.argv[1]]))
"""


def test_a_clock_stepped_back_under_a_running_flusher_does_not_stall_delivery(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0", "LANGFUSE_FLUSH_INTERVAL": "0.2"}
    import subprocess
    import sys

    worker = subprocess.Popen(
        [sys.executable, "-c", STEPPED_BACK_WORKER, queue_dir],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "stepped"
        # Writers keep the real clock: to the stepped flusher their stamps are an hour ahead.
        run_python(
            """
            from langfuse_dq import Langfuse
            lf = Langfuse(autospawn=False)
            for i in range(20):
                trace = lf.trace(name=f"after-step-{i}")
                trace.span(name=f"s{i}").end()
            lf.shutdown()
            """,
            env,
        )
        started = time.monotonic()
        expected = {f"after-step-{i}" for i in range(20)} | {f"s{i}" for i in range(20)}

        def delivered() -> bool:
            return expected <= {s["name"] for s in server.spans()}

        while not delivered() and time.monotonic() - started < 30:
            time.sleep(0.2)
        assert delivered(), "delivery stalled after the flusher's clock was stepped back"
    finally:
        stop_proc(worker)
    assert worker.returncode == 0
