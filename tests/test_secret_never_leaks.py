"""The secret key never appears in the queue, quarantine, logs, tracebacks, repr(), the
flusher's command line, or status output; permissions hold whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from helpers import Server, clean_env, flusher_pid, run_python, stop_flusher, wait_for

SECRET = "sk-lf-0123abcd-very-secret-do-not-leak"
SECRET_B64_PART = "c2stbGYtMDEyM2FiY2Qt"  # base64 of the start of "sk-lf-0123abcd-" (auth header)

_SCRIPT = Path(sys.executable).with_name("langfuse-dq")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "langfuse_dq"]

APP = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from langfuse_dq import Langfuse
lf = Langfuse(flush_interval=0.2)
print(repr(lf), repr(lf.config), str(lf.config))
for i in range(20):
    t = lf.trace(name=f"t{i}", input={"i": i})
    t.span(name="poison-span" if i == 3 else f"s{i}").end()
    t.score(name="q", value=1)
try:
    lf.span(name="no trace id")
except ValueError as exc:
    import traceback
    traceback.print_exc()
print("flushed", lf.flush(timeout=30))
lf.shutdown()
"""


def _all_bytes_under(root: Path) -> bytes:
    data = b""
    for path in root.rglob("*"):
        if path.is_file():
            data += path.read_bytes()
    return data


def test_the_secret_key_appears_nowhere(tmp_path: Path, server: Server) -> None:
    queue_dir = tmp_path / "queue"
    server.faults(reject_names=["poison"])
    env = clean_env(
        LANGFUSE_PUBLIC_KEY="pk-lf-test",
        LANGFUSE_SECRET_KEY=SECRET,
        LANGFUSE_BASE_URL=server.url,
        LANGFUSE_DQ_DIR=str(queue_dir),
        LANGFUSE_DQ_IDLE_EXIT="3",
    )
    out = subprocess.run(
        [sys.executable, "-c", APP],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "flushed False" in out.stdout, "the poison span went to quarantine"
    assert "secret_key='***'" in out.stdout
    pid = wait_for(lambda: flusher_pid(str(queue_dir)), 15, what="the spawned flusher")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        statuses = [
            subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
            for args in (
                ["status"],
                ["status", "--json"],
                ["status", "--prometheus"],
                ["quarantine", "list", "--json"],
                ["check"],
                ["flush", "--timeout", "5"],
            )
        ]
        shown = subprocess.run(
            [*CLI, "quarantine", "show", json.loads(statuses[3].stdout)[0]["id"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop_flusher(str(queue_dir))
    everything = (
        out.stdout.encode()
        + out.stderr.encode()
        + cmdline
        + _all_bytes_under(queue_dir)
        + b"".join(s.stdout.encode() + s.stderr.encode() for s in [*statuses, shown])
    )
    assert SECRET.encode() not in everything
    assert SECRET_B64_PART.encode() not in everything
    assert any((queue_dir / "quarantine").iterdir()), "the quarantine was written and searched"
    assert any(s.returncode == 0 for s in statuses[:4])


def test_permissions_hold_with_a_permissive_umask_in_the_flusher_too(
    tmp_path: Path, server: Server
) -> None:
    queue_dir = tmp_path / "queue"
    env = clean_env(
        LANGFUSE_PUBLIC_KEY="pk",
        LANGFUSE_SECRET_KEY=SECRET,
        LANGFUSE_BASE_URL=server.url,
        LANGFUSE_DQ_DIR=str(queue_dir),
    )
    server.faults(reject_names=["poison"])
    run_python(
        """
        import os
        os.umask(0)
        from langfuse_dq import Langfuse
        lf = Langfuse(flush_interval=0.2, autospawn=False)
        lf.trace(name="t").span(name="poison").end()
        lf.trace(name="u").span(name="ok").end()
        lf.flush(timeout=20)
        lf.shutdown()
        """,
        env,
    )
    assert any((queue_dir / "quarantine").iterdir())
    assert (queue_dir / "state").is_dir()
    for path in [queue_dir, *queue_dir.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path}: {oct(mode)}"
        else:
            assert mode & 0o077 == 0, f"{path}: {oct(mode)}"
