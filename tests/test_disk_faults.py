"""Whatever happens to the disk, the app keeps serving and the queue keeps what it accepted.

Faults are real: a tmpfs of 2 MiB mounted for the test (root only, skipped with the reason
elsewhere), a file-size limit (RLIMIT_FSIZE) set in a writer process, a queue directory
deleted under a running writer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import (
    KEYS,
    Server,
    clean_env,
    journal_events,
    journal_lines,
    offline_client,
    run_python,
)
from langfuse_dq import Langfuse


def test_disk_full_counts_drops_stays_fast_damages_nothing_and_resumes(
    small_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue_dir = str(small_mount / "queue")
    lf = offline_client(queue_dir)
    filler = small_mount / "filler"
    payload = "p" * 2000
    with caplog.at_level(logging.WARNING, logger="langfuse_dq"):
        accepted = []
        for i in range(300):
            lf.trace(name=f"before-{i}", input=payload)
            accepted.append(f"before-{i}")
        # Fill the filesystem to the last byte.
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        started = time.perf_counter()
        for i in range(2000):
            lf.trace(name=f"full-{i}", input=payload)
        elapsed = time.perf_counter() - started
        filler.unlink()  # space comes back
        time.sleep(0.6)
        for i in range(100):
            lf.trace(name=f"after-{i}", input=payload)
    lf.shutdown()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0], errors
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert elapsed < 5, f"2000 refused events took {elapsed:.1f}s"
    names = [e["body"]["name"] for e in journal_events(queue_dir)]  # every line still parses
    assert names[:300] == accepted, "nothing already queued was damaged"
    assert {f"after-{i}" for i in range(100)} <= set(names), "writing resumed by itself"
    drops = [line for line in journal_lines(queue_dir) if line.get("_c") == "drop"]
    dropped = sum(n for d in drops for n in d["reasons"].values())
    full_written = sum(1 for n in names if n.startswith("full-"))
    assert dropped + full_written == 2000, "every event is either queued or counted as dropped"
    assert any(reason == "disk_error:ENOSPC" for d in drops for reason in d["reasons"])


FSIZE_WRITER = """
import json, resource
from langfuse_dq import Langfuse
lf = Langfuse(autospawn=False, host="http://127.0.0.1:9")
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
written = 0
for i in range(2000):
    lf.trace(name=f"e{i}", input="x" * 500)
print(json.dumps({"dropped": lf._queue.dropped_total}))
lf.shutdown()
"""


def test_a_file_size_limit_is_a_counted_drop_not_a_crash(queue_dir: str) -> None:
    env = clean_env(LANGFUSE_DQ_DIR=queue_dir, **KEYS)
    out = run_python(FSIZE_WRITER, env)
    dropped = json.loads(out.stdout.strip().splitlines()[-1])["dropped"]
    names = [e["body"]["name"] for e in journal_events(queue_dir)]
    assert dropped > 0 and names, "some were written, the rest counted"
    assert len(names) + dropped == 2000
    assert names == [f"e{i}" for i in range(len(names))], "queued events are intact and in order"


def test_a_queue_directory_deleted_under_a_running_writer_is_recreated_and_losses_counted(
    queue_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    lf = offline_client(queue_dir)
    lf.trace(name="first")
    with caplog.at_level(logging.WARNING, logger="langfuse_dq"):
        shutil.rmtree(queue_dir)
        for i in range(50):
            lf.trace(name=f"into-the-void-{i}")
        time.sleep(1.1)  # the writer notices within about a second
        for i in range(50):
            lf.trace(name=f"after-{i}")
            time.sleep(0.01)
    lf.shutdown()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "removed" in errors[0]
    assert os.path.isdir(queue_dir), "recreated"
    names = [e["body"]["name"] for e in journal_events(queue_dir)]
    assert {f"after-{i}" for i in range(50)} <= set(names)
    drops = [line for line in journal_lines(queue_dir) if line.get("_c") == "drop"]
    lost = sum(d["reasons"].get("queue_dir_removed", 0) for d in drops)
    assert lost >= 50, "the events written into the deleted directory are counted as lost"


def test_a_full_disk_does_not_stop_the_flusher_from_delivering_what_is_queued(
    small_mount: Path, tmp_path: Path
) -> None:
    server = Server(tmp_path / "srv")
    try:
        queue_dir = str(small_mount / "queue")
        lf = Langfuse(
            public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
            secret_key=KEYS["LANGFUSE_SECRET_KEY"],
            host=server.url,
            queue_dir=queue_dir,
            autospawn=False,
            flush_interval=0.2,
        )
        for i in range(100):
            lf.trace(name=f"t{i}").span(name=f"s{i}").end()
        with open(small_mount / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        # The flusher's bookkeeping lives in the same full directory; it must still deliver
        # once space is back, and nothing queued may be lost meanwhile.
        assert lf.flush(timeout=5) is False or len(server.spans()) == 200
        (small_mount / "filler").unlink()
        assert lf.flush(timeout=30) is True
        names = {s["name"] for s in server.spans()}
        assert {f"s{i}" for i in range(100)} <= names
        lf.shutdown()
    finally:
        server.stop()
