"""Requests per second of a small WSGI app under gunicorn, with and without langfuse-dq tracing.

What is measured
----------------
The app of tests/test_gunicorn_preload.py: each request records a trace, a span and a
generation with a module-level client (7 events: trace, span create/update/end, generation
create/end, trace update), or, with ``LANGFUSE_TRACING_ENABLED=false``, does the same calls
on a disabled client (no-ops). gunicorn runs it with ``--workers 4 --preload --max-requests 25
--max-requests-jitter 5`` by default (``--max-requests 0``: no recycling). A pool of client
threads (``--threads``, default 6) sends ``--requests`` GET requests (default 2000) over fresh
connections to 127.0.0.1; the rate is requests / wall-clock time of the whole batch, after one
untimed warm-up request. Rounds alternate off/on (``--rounds``, default 3) and the median is
reported. With tracing on, a dev server (``python -m langfuse_dq.devserver``) receives what
the spawned flusher delivers, while the requests run (so delivery competes for the CPU, as in
production); after each round the benchmark waits until everything was delivered (untimed).

The load generator runs on the same machine, so on a small machine the figures are bounded
by the CPU shared between client threads, gunicorn workers, the flusher and the dev server:
read them as a comparison of on and off, not as the capacity of a server.

Every process started here is stopped here (the flusher too) and temporary directories are
deleted. It prints figures and never fails on a threshold::

    .venv/bin/python tests/bench/bench_gunicorn.py
    .venv/bin/python tests/bench/bench_gunicorn.py --requests 500 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PYTHON = sys.executable
APP = """
import os
from urllib.parse import parse_qs

from langfuse_dq import Langfuse, Usage

lf = Langfuse()


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
KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-bench", "LANGFUSE_SECRET_KEY": "sk-lf-bench"}


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(port: int, i: int) -> float:
    """One request; its latency in seconds."""
    started = time.perf_counter()
    for attempt in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("GET", f"/work?i={i}")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"status {resp.status}")
            return time.perf_counter() - started
        except (ConnectionError, http.client.RemoteDisconnected):
            if attempt == 4:
                raise
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError("unreachable")


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port_file = workdir / "server-port"
    store = workdir / "server-store.jsonl"
    cmd = [PYTHON, "-m", "langfuse_dq.devserver", "--port", "0", "--port-file", str(port_file)]
    proc = subprocess.Popen([*cmd, "--store", str(store), "--quiet"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the dev server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}", str(store)


def flusher_pid(queue_dir: str) -> int:
    try:
        with open(os.path.join(queue_dir, "flusher.json"), encoding="utf-8") as fh:
            pid = json.load(fh).get("pid")
    except (OSError, ValueError):
        return 0
    return pid if isinstance(pid, int) else 0


def stop_flusher(queue_dir: str) -> None:
    pid = flusher_pid(queue_dir)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def count_lines(path: str) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


MODES = ("off", "on", "on-deferred")


def one_round(
    workdir: Path, args: argparse.Namespace, mode: str, server_url: str, store: str
) -> dict[str, Any]:
    queue_dir = str(workdir / f"queue-{time.monotonic_ns()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE")}
    env.update(KEYS, LANGFUSE_BASE_URL=server_url, LANGFUSE_DQ_DIR=queue_dir)
    env["LANGFUSE_TRACING_ENABLED"] = "false" if mode == "off" else "true"
    if mode == "on-deferred":
        env["LANGFUSE_DQ_AUTOSPAWN"] = "false"
    env["PYTHONPATH"] = str(workdir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    cmd = [PYTHON, "-m", "gunicorn", "--workers", str(args.workers), "--preload"]
    if args.max_requests:
        cmd += ["--max-requests", str(args.max_requests), "--max-requests-jitter", "5"]
    cmd += ["--bind", f"fd://{sock.fileno()}", "--log-level", "warning", "app_bench:app"]
    before = count_lines(store)
    proc = subprocess.Popen(
        cmd, cwd=str(workdir), env=env, pass_fds=(sock.fileno(),), stdout=subprocess.DEVNULL
    )
    sock.close()
    try:
        get(port, -1)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            latencies = sorted(pool.map(lambda i: get(port, i), range(args.requests)))
        elapsed = time.perf_counter() - started
    finally:
        stop(proc)
    delivered = 0
    if mode == "on":  # untimed: wait for delivery (3 spans per request), then stop the flusher
        expected = before + 3 * (args.requests + 1)
        deadline = time.monotonic() + 120
        while count_lines(store) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        delivered = count_lines(store) - before
        stop_flusher(queue_dir)
    shutil.rmtree(queue_dir, ignore_errors=True)
    return {
        "rate": args.requests / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "delivered_spans": delivered,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="default: all three"
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dq-bench-gunicorn-"))
    (workdir / "app_bench.py").write_text(textwrap.dedent(APP))
    server, url, store = start_server(workdir)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    try:
        for r in range(args.rounds):
            for mode in args.modes:
                res = one_round(workdir, args, mode, url, store)
                results[mode].append(res)
                log(
                    f"round {r + 1}: tracing {mode:<11} {res['rate']:7.1f} req/s  "
                    f"p50 {res['p50_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms"
                )
    finally:
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    recycling = f"--max-requests {args.max_requests} --max-requests-jitter 5"
    print("langfuse-dq gunicorn benchmark (tests/bench/bench_gunicorn.py)")
    print(
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"cpus: {os.cpu_count()}; load average (1 min) at the end: {os.getloadavg()[0]:.2f}"
    )
    print(
        f"gunicorn --workers {args.workers} --preload "
        f"{recycling if args.max_requests else '(no recycling)'}; "
        f"{args.requests} requests per round from {args.threads} client threads; "
        f"{args.rounds} rounds"
    )
    print()
    print("tracing      median req/s  rounds               median p50 ms  median p99 ms")
    for mode in args.modes:
        rows = results[mode]
        rates = ", ".join(f"{row['rate']:.0f}" for row in rows)
        print(
            f"{mode:<11}  {statistics.median(row['rate'] for row in rows):12.1f}  {rates:<20}"
            f" {statistics.median(row['p50_ms'] for row in rows):13.1f}"
            f"  {statistics.median(row['p99_ms'] for row in rows):13.1f}"
        )
    print(
        "\noff: LANGFUSE_TRACING_ENABLED=false; on: tracing, the flusher delivering meanwhile;"
        "\non-deferred: tracing with LANGFUSE_DQ_AUTOSPAWN=false (enqueue only, nothing sent)"
    )
    if "on" in results:
        delivered = [row["delivered_spans"] for row in results["on"]]
        print(f"spans delivered per 'on' round (expected {3 * (args.requests + 1)}): {delivered}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
