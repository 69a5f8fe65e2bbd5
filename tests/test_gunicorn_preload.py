"""Real gunicorn: 4 workers, --preload (client created in the master before fork), workers
recycled every 25±5 requests. Every request's trace is delivered, nothing is left running but
the flusher, which exits on its own once idle."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest

from helpers import (
    PYTHON,
    Server,
    children_of,
    delivered_trace_names,
    flusher_pid,
    marked_processes,
    spans_by_trace,
    stop_flusher,
    stop_pid,
    stop_proc,
    wait_for,
    zombie_children,
)

APP = """
import os
from urllib.parse import parse_qs

from langfuse_dq import Langfuse, Usage

lf = Langfuse()  # module level: with --preload it is created in the master, before the fork


def app(environ, start_response):
    i = parse_qs(environ.get("QUERY_STRING", "")).get("i", ["-"])[0]
    trace = lf.trace(name=f"req-{i}", user_id="u1", input={"path": environ["PATH_INFO"], "i": i})
    with trace.span(name="handle", input={"i": i}) as span:
        gen = span.generation(
            name="llm", model="gpt-4o-mini", input=[{"role": "user", "content": f"q{i}"}]
        )
        gen.end(output={"role": "assistant", "content": f"a{i}"},
                usage=Usage(input=10, output=5, total=15))
        span.update(output={"ok": True})
    trace.update(output={"answer": f"a{i}"})
    body = f"{os.getpid()} {i}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

HOOKS = """
from langfuse_dq.integrations.gunicorn import on_exit, when_ready, worker_exit
"""

MARK = "LANGFUSE_DQ_TEST_MARK"


def listening_socket() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1, handed to gunicorn as fd://N."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


def start_gunicorn(
    app_dir: Path, env: dict[str, str], sock: socket.socket, config: Optional[Path] = None
) -> subprocess.Popen[bytes]:
    cmd = [PYTHON, "-m", "gunicorn", "--workers", "4", "--preload"]
    cmd += ["--max-requests", "25", "--max-requests-jitter", "5"]
    cmd += ["--bind", f"fd://{sock.fileno()}", "--log-level", "warning"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd.append("app_gunicorn:app")
    log = open(app_dir / "gunicorn.log", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd,
            cwd=str(app_dir),
            env={**env, "PYTHONPATH": str(app_dir)},
            pass_fds=(sock.fileno(),),
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()


def get(port: int, i: int) -> tuple[int, int]:
    """GET /?i=<i>; (status, worker pid). Retries a refused/reset connection a few times."""
    for attempt in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/work?i={i}")
            resp = conn.getresponse()
            body = resp.read().decode()
            return resp.status, int(body.split()[0])
        except (ConnectionError, http.client.RemoteDisconnected):
            if attempt == 4:
                raise
            time.sleep(0.1)
        finally:
            conn.close()
    raise AssertionError("unreachable")


def drive(port: int, n: int, threads: int = 6) -> tuple[list[tuple[int, int]], float]:
    """``n`` requests from a bounded pool of client threads: (results, requests per second)."""
    get(port, -1)  # wait for a worker, outside the timed part
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda i: get(port, i), range(n)))
    return results, n / (time.perf_counter() - started)


def run_app(
    tmp_path: Path,
    env: dict[str, str],
    requests: int,
    config: Optional[str] = None,
) -> tuple[list[tuple[int, int]], float, str]:
    """Serve APP with gunicorn, send ``requests`` requests, stop gunicorn gracefully."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app_gunicorn.py").write_text(textwrap.dedent(APP))
    conf_path = None
    if config is not None:
        conf_path = app_dir / "gunicorn.conf.py"
        conf_path.write_text(textwrap.dedent(config))
    mark = uuid.uuid4().hex
    sock = listening_socket()
    port = sock.getsockname()[1]
    proc = start_gunicorn(app_dir, {**env, MARK: mark}, sock, conf_path)
    sock.close()
    try:
        results, rate = drive(port, requests)

        def zombies() -> list[int]:
            tree = [proc.pid, *children_of(proc.pid)]
            return [z for pid in tree for z in zombie_children(pid)]

        # A recycled worker is a zombie until the master reaps it; none may linger, and no
        # process a worker started (a flusher launcher) either.
        wait_for(lambda: not zombies(), 10, what="no zombie under gunicorn")
    finally:
        stop_proc(proc, grace=30)
    assert proc.returncode == 0, (app_dir / "gunicorn.log").read_text()
    return results, rate, mark


def assert_only_flusher_left(mark: str, queue_dir: str) -> None:
    """Of everything gunicorn started, at most the flusher is still running, and no zombie."""

    def leftovers() -> list[int]:
        return [p for p in marked_processes(MARK, mark) if p != flusher_pid(queue_dir)]

    wait_for(lambda: not leftovers(), 10, what="gunicorn's processes to be gone")
    assert zombie_children(os.getpid()) == []


def assert_every_request_delivered(server: Server, n: int) -> None:
    expected = {f"req-{i}" for i in range(n)}

    def missing() -> set[str]:
        names = delivered_trace_names(server)
        return {t for t in expected if names.get(t, set()) != {t, "handle", "llm"}}

    wait_for(lambda: not missing(), 90, interval=0.5, what="every request's trace delivered")
    spans = [s for group in spans_by_trace(server).values() for s in group]
    ids = [s["spanId"] for s in spans if str(s["attrs"].get("langfuse.trace.name")) in expected]
    assert len(ids) == 3 * n and len(set(ids)) == len(ids), "each span delivered exactly once"


def assert_nothing_left(mark: str) -> None:
    """Every process of the tree is gone: the flusher lets go of its lock a moment before its
    interpreter ends, so give the last one a few seconds; whatever remains is stopped by pid."""

    def describe(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read().replace(b"\0", b" ").decode(errors="replace")
            return f"{pid}: {command}"
        except OSError:
            return f"{pid}: (gone)"

    try:
        wait_for(lambda: not marked_processes(MARK, mark), 15, what="every process to exit")
    except AssertionError:
        left = marked_processes(MARK, mark)
        described = [describe(pid) for pid in left]
        for pid in left:
            stop_pid(pid)
        raise AssertionError(f"processes left running: {described}") from None


def assert_flusher_exits_when_idle(queue_dir: str) -> None:
    # LANGFUSE_DQ_IDLE_EXIT=3: a drained flusher exits on its own a few seconds later.
    try:
        wait_for(lambda: flusher_pid(queue_dir) is None, 30, what="the idle flusher to exit")
    finally:
        stop_flusher(queue_dir)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gunicorn_preload_with_worker_recycling_delivers_every_request(
    tmp_path: Path, queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    n = 1000
    results, rate, mark = run_app(tmp_path, client_env, n)
    print(f"\ngunicorn --workers 4 --preload --max-requests 25, tracing on: {rate:.0f} requests/s")

    assert [status for status, _ in results] == [200] * n
    workers = {pid for _, pid in results}
    assert len(workers) > 4 * 2, f"workers were recycled ({len(workers)} worker pids served)"
    assert_only_flusher_left(mark, queue_dir)
    assert_every_request_delivered(server, n)
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")], "workers are gone"
    assert_flusher_exits_when_idle(queue_dir)
    assert_nothing_left(mark)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gunicorn_hooks_from_the_integration_module(
    tmp_path: Path, queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    n = 200
    results, _rate, mark = run_app(tmp_path, client_env, n, config=HOOKS)
    assert [status for status, _ in results] == [200] * n
    assert_only_flusher_left(mark, queue_dir)
    assert_every_request_delivered(server, n)
    log = (tmp_path / "app" / "gunicorn.log").read_text()
    assert "langfuse-dq" not in log, log  # no hook complained
    assert_flusher_exits_when_idle(queue_dir)
    assert_nothing_left(mark)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gunicorn_with_tracing_disabled_writes_nothing_and_starts_no_flusher(
    tmp_path: Path, queue_dir: str, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_TRACING_ENABLED": "false"}
    results, rate, mark = run_app(tmp_path, env, 200)
    print(f"\ngunicorn --workers 4 --preload --max-requests 25, tracing off: {rate:.0f} requests/s")
    assert [status for status, _ in results] == [200] * 200
    assert not os.path.exists(os.path.join(queue_dir, "journal"))
    assert flusher_pid(queue_dir) is None
    assert_only_flusher_left(mark, queue_dir)
    assert marked_processes(MARK, mark) == []
