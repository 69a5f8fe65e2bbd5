"""Many processes append to one queue directory at once: every event lands exactly once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from helpers import KEYS, clean_env, journal_events, journal_lines, stop_proc
from langfuse_dq import Langfuse

WRITERS = 4
EVENTS_PER_WRITER = 5000
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

WRITER = """
import os, sys, time
from langfuse_dq import Langfuse
lf = Langfuse(autospawn=False, host="http://127.0.0.1:9")
go = sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
k = sys.argv[1]
for i in range({n}):
    lf.trace(name=f"w{{k}}-{{i}}", input={{"i": i, "pad": "x" * 200}})
lf.shutdown()
"""


@pytest.mark.timeout(180)
def test_four_processes_times_five_thousand_events_each_land_exactly_once(
    queue_dir: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    env = clean_env(LANGFUSE_DQ_DIR=queue_dir, **KEYS)
    code = WRITER.format(n=EVENTS_PER_WRITER)
    procs = [_spawn(code, env, k, str(go)) for k in range(WRITERS)]
    try:
        go.touch()
        for proc in procs:
            assert proc.wait(timeout=150) == 0
    finally:
        for proc in procs:
            stop_proc(proc)

    events = journal_events(queue_dir)
    names = [e["body"]["name"] for e in events]
    expected = {f"w{k}-{i}" for k in range(WRITERS) for i in range(EVENTS_PER_WRITER)}
    assert len(events) == WRITERS * EVENTS_PER_WRITER
    assert set(names) == expected, "every event is present"
    assert len(set(names)) == len(names), "no event is present twice"
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids), "every event has its own envelope id"
    trace_ids = {e["body"]["id"] for e in events}
    assert len(trace_ids) == len(events)
    assert all(ISO_Z.match(e["timestamp"]) for e in events)
    # Each writer appended to segments of its own, in order.
    by_writer: dict[str, list[int]] = {}
    for line in journal_lines(queue_dir):
        if "_c" in line:
            continue
        writer = line["_segment"].rsplit("-", 1)[0]
        by_writer.setdefault(writer, []).append(line["body"]["input"]["i"])
    assert len(by_writer) == WRITERS
    for sequence in by_writer.values():
        assert sequence == list(range(EVENTS_PER_WRITER))
    assert (
        len({os.path.basename(line["_segment"]).split("-")[0] for line in journal_lines(queue_dir)})
        == WRITERS
    )


def _spawn(code: str, env: dict[str, str], k: int, go: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(k), go], env=env)


def test_threads_of_one_process_share_its_segment_without_interleaving(queue_dir: str) -> None:
    lf = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    payload = "y" * 5000  # big lines make interleaving visible if it ever happened

    def work(t: int) -> None:
        for i in range(500):
            lf.trace(name=f"t{t}-{i}", input=payload)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lf.shutdown()
    events = journal_events(queue_dir)
    assert len(events) == 4000
    assert {e["body"]["name"] for e in events} == {
        f"t{t}-{i}" for t in range(8) for i in range(500)
    }
