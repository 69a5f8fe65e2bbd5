"""Damaged files (half-written quarantine files, garbage VERSION, stale locks and heartbeats,
garbage journal lines) are detected, moved aside or skipped, counted, and never stop delivery."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import Server, journal_events, queue_stats, run_python
from langfuse_dq import Langfuse
from langfuse_dq.queuedir import open_queue_dir

_SCRIPT = Path(sys.executable).with_name("langfuse-dq")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "langfuse_dq"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_half_written_and_garbage_quarantine_files_are_moved_aside_and_reported(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    server.faults(reject_names=["bad"])
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse()
        lf.trace(name="t").span(name="bad").end()
        lf.shutdown()
        """,
        env,
    )
    assert _cli("flush", "--timeout", "30", env=env).returncode == 1
    quarantine = Path(queue_dir) / "quarantine"
    (good,) = list(quarantine.glob("*.json"))
    text = good.read_text()
    (quarantine / "qtruncated000000.json").write_text(text[: len(text) // 2])
    (quarantine / "qgarbage00000000.json").write_bytes(b"\x00\xff not json at all")
    (quarantine / ".qleftover.json.123.abcd.tmp").write_text(text[:100])

    listed = _cli("quarantine", "list", "--json", env=env)
    assert listed.returncode == 0
    assert [b["id"] for b in json.loads(listed.stdout)] == [good.stem], "the readable batch is kept"
    assert listed.stderr.count("unreadable") == 3
    assert sorted(p.name for p in quarantine.iterdir()) == [good.name]
    moved = sorted(p.name for d in Path(queue_dir).glob("corrupt-*") for p in d.iterdir())
    assert moved == sorted(
        ["qtruncated000000.json", "qgarbage00000000.json", ".qleftover.json.123.abcd.tmp"]
    )
    status = json.loads(_cli("status", "--json", env=env).stdout)
    assert status["corrupt_files"] == 3 and status["quarantined"] == 2


def test_a_garbage_version_file_is_moved_aside_not_a_reason_to_stop_recording(
    queue_dir: str,
) -> None:
    lf = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    lf.trace(name="before")
    lf.shutdown()
    Path(queue_dir, "VERSION").write_bytes(b"\x00garbage\xff")
    lf2 = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    lf2.trace(name="after")
    lf2.shutdown()
    events = sorted(journal_events(queue_dir), key=lambda e: e["_t"])
    assert [e["body"]["name"] for e in events] == ["before", "after"]
    assert Path(queue_dir, "VERSION").read_text().strip() == "1"
    assert any(p.name == "VERSION" for d in Path(queue_dir).glob("corrupt-*") for p in d.iterdir())


def test_a_future_layout_version_is_refused_rather_than_misread(queue_dir: str) -> None:
    lf = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    lf.trace(name="x")
    lf.shutdown()
    Path(queue_dir, "VERSION").write_text("2\n")
    lf2 = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    lf2.trace(name="not written")
    assert [e["body"]["name"] for e in journal_events(queue_dir)] == ["x"]
    assert lf2._queue is not None and not lf2._queue.usable


def test_a_stale_lock_file_and_heartbeat_of_a_dead_flusher_do_not_block_delivery(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse()
        lf.trace(name="t").span(name="s").end()
        lf.shutdown()
        """,
        env,
    )
    Path(queue_dir, "flusher.lock").write_text("garbage left by a crashed process\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(queue_dir, "flusher.json").write_text(
        json.dumps({"pid": dead.pid, "start": 1, "started_at": 0})
    )
    status = json.loads(_cli("status", "--json", env=env).stdout)
    assert status["flusher_alive"] is False
    assert _cli("flush", "--timeout", "30", env=env).returncode == 0
    assert {s["name"] for s in server.spans()} == {"t", "s"}


def test_garbage_lines_in_a_journal_segment_are_skipped_and_counted(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse()
        for i in range(3):
            lf.trace(name=f"t{i}").span(name=f"s{i}").end()
        lf.shutdown()
        """,
        env,
    )
    (segment,) = list(Path(queue_dir, "journal").glob("*.seg"))
    with open(segment, "ab") as fh:
        fh.write(b'{"this is": "not an event"}\n\x00\x01 binary garbage\n{"truncated": \n')
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse()
        lf.trace(name="after").span(name="s-after").end()
        lf.shutdown()
        """,
        env,
    )
    assert _cli("flush", "--timeout", "30", env=env).returncode == 0
    names = {s["name"] for s in server.spans()}
    assert {"t0", "t1", "t2", "s0", "s1", "s2", "after", "s-after"} <= names
    stats = queue_stats(queue_dir)
    assert stats["corrupt_lines"] == 3 and stats["pending"] == 0
    assert os.path.isdir(open_queue_dir(queue_dir, create=False).journal)


def test_a_garbage_state_database_is_moved_aside_and_the_journal_replayed(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    code = """
    from langfuse_dq import Langfuse
    lf = Langfuse()
    for i in range(20):
        lf.trace(name=f"PREFIX-{i}").span(name=f"PREFIX-s{i}").end()
    lf.shutdown()
    """
    run_python(code.replace("PREFIX", "first"), env)
    assert _cli("flush", "--timeout", "30", env=env).returncode == 0
    run_python(code.replace("PREFIX", "second"), env)
    for name in ("cache.db", "tombstones.sqlite"):
        path = Path(queue_dir, "state", name)
        path.write_bytes(b"this is not an SQLite database at all" * 100)
    for leftover in Path(queue_dir, "state").glob("*-wal"):
        leftover.unlink()
    before = _cli("status", "--json", env=env)
    assert "Traceback" not in before.stderr
    report = json.loads(before.stdout)
    assert "damaged" in report["last_error"] and report["pending"] >= 40
    out = _cli("flush", "--timeout", "60", env=env)
    assert out.returncode == 0, out.stderr
    names = collections.Counter(s["name"] for s in server.spans())
    assert {f"second-s{i}" for i in range(20)} <= set(names), "nothing pending was lost"
    stats = json.loads(_cli("status", "--json", env=env).stdout)
    assert stats["pending"] == 0
    assert stats["corrupt_files"] >= 1 and stats["corrupt_state"] >= 1
    moved = [p.name for d in Path(queue_dir).glob("corrupt-*") for p in d.iterdir()]
    assert "state" in moved


def test_drop_oldest_keeps_the_queue_bounded_and_counts_what_it_discards(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {
        **client_env,
        "LANGFUSE_DQ_AUTOSPAWN": "0",
        "LANGFUSE_DQ_MAX_BYTES": "300000",
        "LANGFUSE_DQ_FULL_POLICY": "drop_oldest",
    }
    run_python(
        """
        from langfuse_dq import Langfuse
        lf = Langfuse()
        for i in range(600):
            lf.trace(name=f"t{i}", input="x" * 300)
        lf.shutdown()
        """,
        env,
    )
    before = queue_stats(queue_dir)
    assert before["pending_bytes"] > 300_000, "writers accept up to twice the bound"
    assert _cli("flush", "--timeout", "60", env=env).returncode == 0, "all that was kept arrived"
    stats = queue_stats(queue_dir)
    dropped = stats["dropped_by_reason"].get("queue_full_oldest", 0)
    written = 600 - before["dropped"]
    roots = {s["name"] for s in server.spans()}
    assert dropped > 0 and len(roots) + dropped == written
    assert f"t{599}" in roots and "t0" not in roots, "the oldest were discarded, the newest kept"
