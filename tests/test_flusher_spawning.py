"""The flusher a client spawns: detached, one per directory, survives its spawner, never in
argv with the secret, cheap for the hot path to look after."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import (
    KEYS,
    Server,
    flusher_pid,
    python_script,
    start_flusher,
    stop_pid,
    stop_proc,
    wait_for,
)
from langfuse_dq import Langfuse
from langfuse_dq.spawn import FlusherSupervisor

APP = """
import os, sys, time
from langfuse_dq import Langfuse
lf = Langfuse(flush_interval=0.2)
lf.trace(name="from-app").span(name="s").end()
os.write(1, b"written\\n")
time.sleep(60)
"""


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    data = fh.read()
                ppid = int(data[data.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def test_spawned_flusher_is_detached_survives_its_app_and_keeps_the_secret_out_of_argv(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    app = subprocess.Popen(python_script(APP), env=client_env, stdout=subprocess.PIPE)
    try:
        assert app.stdout is not None
        assert app.stdout.readline() == b"written\n"
        pid = wait_for(lambda: flusher_pid(queue_dir), 15, what="a spawned flusher")
        assert pid not in _children_of(app.pid), "the flusher is not the app's child"
        assert os.getsid(pid) == pid, "the flusher runs in a session of its own"
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        assert KEYS["LANGFUSE_SECRET_KEY"].encode() not in cmdline
        assert b"langfuse_dq.flusher" in cmdline
        assert os.readlink(f"/proc/{pid}/fd/1") == os.path.join(queue_dir, "flusher.log")
        wait_for(lambda: _zombies(app.pid) == [], 5, what="no zombie left in the app")
        # The app dies hard; the flusher carries on and delivers.
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=10)
        wait_for(
            lambda: {"from-app", "s"} <= {s["name"] for s in server.spans()}, 30, what="delivery"
        )
        assert flusher_pid(queue_dir) == pid
    finally:
        stop_proc(app)
        stop_pid(flusher_pid(queue_dir) or 0)


def _zombies(pid: int) -> list[int]:
    zombies = []
    for child in _children_of(pid):
        try:
            with open(f"/proc/{child}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if data[data.rindex(b")") + 2 : data.rindex(b")") + 3] == b"Z":
            zombies.append(child)
    return zombies


def test_a_second_flusher_for_the_same_directory_exits_at_once(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    first = start_flusher(client_env, queue_dir, idle_exit=False)
    try:
        wait_for(lambda: flusher_pid(queue_dir) == first.pid, 15, what="the first flusher")
        started = time.monotonic()
        second = start_flusher(client_env, queue_dir, idle_exit=False)
        try:
            assert second.wait(timeout=15) == 0
        finally:
            stop_proc(second)
        assert time.monotonic() - started < 10
        assert first.poll() is None
        with open(os.path.join(queue_dir, "flusher.log"), encoding="utf-8") as fh:
            assert "another flusher holds" in fh.read()
    finally:
        stop_proc(first)


def test_an_idle_flusher_exits_on_its_own(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    proc = start_flusher({**client_env, "LANGFUSE_DQ_IDLE_EXIT": "1"}, queue_dir, idle_exit=True)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        stop_proc(proc)


def test_the_hot_path_checks_the_flusher_at_most_about_once_a_second(
    queue_dir: str, server: Server, monkeypatch: object
) -> None:
    calls = 0
    original = FlusherSupervisor.check

    def counting(self: FlusherSupervisor, background: bool = False) -> bool:
        nonlocal calls
        calls += 1
        return original(self, background)

    FlusherSupervisor.check = counting  # type: ignore[method-assign]
    try:
        lf = Langfuse(
            public_key="pk",
            secret_key="sk",
            host=server.url,
            queue_dir=queue_dir,
            flush_interval=0.2,
        )
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 1.5:
            lf.trace(name="t")
            n += 1
        elapsed = time.monotonic() - started
    finally:
        FlusherSupervisor.check = original  # type: ignore[method-assign]
    assert n > 1000
    assert calls <= elapsed + 2, f"{calls} checks for {n} events in {elapsed:.1f}s"
    lf.shutdown()
