"""End-to-end drain: one flusher process empties a pre-filled queue into the local dev server.

What is measured
----------------
1. The dev server (``python -m langfuse_dq.devserver --port 0 --port-file F --store S
   --quiet``) starts in a process of its own.
2. A fresh temporary queue directory is filled with ``--events`` events by ``--writers``
   writer processes (default 1), using the public client API with ``autospawn=False``: per
   trace ``lf.trace(name=, input=, user_id=)``, three ``trace.span(name=, input=)
   .end(output=)``, one ``trace.generation(name=, model=, input=, usage=Usage(input=10,
   output=20, total=30)).end(output=)`` and one ``trace.score(name=, value=)``: 10 queued
   events, which become 5 OTLP spans (the root, three spans, the generation) and one
   ingestion event. Nothing is sent while filling.
3. The queue is left to settle for ``--settle`` seconds (default 4) after the last writer
   exited: a trace's root span is only exported once the trace has been quiet for 3 s
   (``assemble.TRACE_IDLE_NS``), which is a latency floor, not a cost. Pass ``--settle 0``
   to include it.
4. ONE flusher starts exactly as the client spawns it: ``python -m langfuse_dq.flusher --dir
   DIR --exit-when-idle`` with ``LANGFUSE_PUBLIC_KEY``/``SECRET_KEY``/``BASE_URL`` and
   ``LANGFUSE_DQ_DIR`` (and ``LANGFUSE_BATCH_SIZE`` with ``--batch-size``) in its
   environment. The clock starts just before it is started (interpreter start included) and
   stops when the server's ``GET /_dq/stats`` counts every expected span and score. Then the
   queue's ``pending`` (``langfuse_dq.stats.queue_stats``) must reach 0 (the flusher's last
   commit).
5. Meanwhile the flusher's resident memory is sampled from ``/proc/<pid>/status``
   (``VmRSS``, and ``VmHWM``, the kernel's peak, read just before it is stopped).

Request sizes are reconstructed from the server's store after the run: each request's spans
(or events) share one ``received_at``; a request body is rebuilt from them exactly as the
flusher builds it (the store keeps each span and envelope as compact ASCII JSON, which is
what the flusher's encoder writes), and compressed as the flusher compresses OTLP bodies
(gzip level 5; ingestion bodies go uncompressed). The server's own request counter is
printed beside it (it also counts retried requests).

How to run (with the project's virtualenv)::

    .venv/bin/python tests/bench/bench_drain.py                      # 50,000 events
    .venv/bin/python tests/bench/bench_drain.py --events 1000000 --writers 4
    .venv/bin/python tests/bench/bench_drain.py --batch-size 2048   # another request size

The table goes to stdout, progress to stderr. ``results-drain.txt`` beside this file is the
record of a 50,000-event and a 1,000,000-event run. Every process started here is stopped
here by its pid, and the temporary directory (queue, server store) removed.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parents[2]
WRITER_COMMAND = "_writer"

PUBLIC_KEY = "pk-lf-bench"
SECRET_KEY = "sk-lf-bench"
EVENTS_PER_TRACE = 10
SPANS_PER_TRACE = 5
SCORES_PER_TRACE = 1
OTLP_GZIP_LEVEL = 5  # as langfuse_dq.flusher compresses OTLP bodies


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- the writer (run as a child process) ----------------------------------------------------


def writer_main(traces: int, tag: str) -> int:
    """Write ``traces`` traces of 10 events each with the public API; nothing is sent."""
    from langfuse_dq import Langfuse, Usage

    lf = Langfuse(autospawn=False)
    for i in range(traces):
        trace = lf.trace(
            name=f"{tag}-{i}",
            input={"question": f"what is {i} plus one?", "i": i},
            user_id=f"user-{i % 97}",
        )
        for j in range(3):
            span = trace.span(name=f"step-{j}", input={"step": j, "query": f"q{i}"})
            span.end(output={"ok": True, "step": j, "items": [i, j]})
        generation = trace.generation(
            name="llm",
            model="gpt-4o-mini",
            input=[{"role": "user", "content": f"what is {i} plus one?"}],
            usage=Usage(input=10, output=20, total=30),
        )
        generation.end(output={"role": "assistant", "content": f"{i + 1}"})
        trace.score(name="quality", value=0.5)
    lf.shutdown()
    return 0


# --- processes ------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """Our environment without any LANGFUSE_* variable, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) if not path else f"{REPO_ROOT}{os.pathsep}{path}"
    return env


class Processes:
    """Every process started here, stopped by its pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=env, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to this pid only
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB (empty once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def proc_cpu(pid: int) -> Optional[float]:
    """User + system CPU seconds of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stats:
    """``GET /_dq/stats`` on one kept-alive connection (polling costs the server little)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.conn: Optional[http.client.HTTPConnection] = None

    def get(self) -> dict[str, int]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.request("GET", "/_dq/stats")
                resp = self.conn.getresponse()
                data: dict[str, int] = json.loads(resp.read())
                return data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def queue_pending(queue_dir: str) -> int:
    from langfuse_dq.queuedir import open_queue_dir
    from langfuse_dq.stats import queue_stats

    return int(queue_stats(open_queue_dir(queue_dir, create=False))["pending"])


# --- request sizes, reconstructed from the store --------------------------------------------


@dataclass
class Requests:
    """Request bodies of one endpoint, as rebuilt from the store."""

    count: int = 0
    items: int = 0
    raw_bytes: int = 0
    gzip_bytes: int = 0
    max_raw: int = 0

    def row(self, name: str) -> list[str]:
        if not self.count:
            return [name, "0", "-", "-", "-", "-"]
        return [
            name,
            str(self.count),
            f"{self.items / self.count:.0f}",
            f"{self.raw_bytes / self.count / 1000:.1f}",
            f"{self.gzip_bytes / self.count / 1000:.1f}" if self.gzip_bytes else "(none)",
            f"{self.max_raw / 1000:.1f}",
        ]


@dataclass
class RequestSizes:
    otlp: Requests = field(default_factory=Requests)
    ingestion: Requests = field(default_factory=Requests)


def reconstruct_requests(store: str) -> RequestSizes:
    """Group the stored spans and events by ``received_at`` (one request each) and rebuild
    each request body the way the flusher builds it."""
    from langfuse_dq.transport.ingestion import request_body

    dumps = json.JSONEncoder(separators=(",", ":")).encode
    sizes = RequestSizes()
    span_groups: dict[str, list[str]] = {}
    heads: dict[str, str] = {}
    event_groups: dict[str, list[str]] = {}
    with open(store, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            at = record.get("received_at", "")
            if record.get("kind") == "span":
                if at not in heads:
                    heads[at] = (
                        '{"resourceSpans":[{"resource":'
                        + dumps(record["resource"])
                        + ',"scopeSpans":[{"scope":'
                        + dumps(record["scope"])
                        + ',"spans":['
                    )
                span_groups.setdefault(at, []).append(dumps(record["span"]))
            elif record.get("kind") == "event":
                event_groups.setdefault(at, []).append(dumps(record["event"]))
    for at, texts in span_groups.items():
        raw = (heads[at] + ",".join(texts) + "]}]}]}").encode("ascii")
        _add(sizes.otlp, len(texts), raw, gzip.compress(raw, compresslevel=OTLP_GZIP_LEVEL))
    for texts in event_groups.values():
        _add(sizes.ingestion, len(texts), request_body(texts), None)
    return sizes


def _add(requests: Requests, items: int, raw: bytes, compressed: Optional[bytes]) -> None:
    requests.count += 1
    requests.items += items
    requests.raw_bytes += len(raw)
    requests.max_raw = max(requests.max_raw, len(raw))
    if compressed is not None:
        requests.gzip_bytes += len(compressed)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    delivered: float  # fraction of the expected spans + scores at the server
    rss_kb: int


@dataclass
class Result:
    events: int
    writers: int
    traces: int
    fill_s: float = 0.0
    settle_s: float = 0.0
    drain_s: float = 0.0
    commit_s: float = 0.0
    flusher_cpu_s: Optional[float] = None
    server_cpu_s: Optional[float] = None
    peak_rss_kb: int = 0
    samples: list[Sample] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    pending_before: int = 0
    pending_after: int = -1
    sizes: Optional[RequestSizes] = None
    journal_bytes: int = 0
    load_before: float = 0.0
    load_after: float = 0.0


def compile_package() -> None:
    """Write the package's bytecode, as ``pip install`` does: a flusher started in an
    environment with PYTHONDONTWRITEBYTECODE (this sandbox sets it) would otherwise compile
    every module from source at each start (~0.2 s)."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "langfuse_dq"), quiet=1)


def run(args: argparse.Namespace) -> Result:
    writers = max(1, args.writers)
    traces_per_writer = max(1, args.events // EVENTS_PER_TRACE // writers)
    traces = traces_per_writer * writers
    result = Result(events=traces * EVENTS_PER_TRACE, writers=writers, traces=traces)
    expected_spans = traces * SPANS_PER_TRACE
    expected_scores = traces * SCORES_PER_TRACE
    procs = Processes()
    if not args.no_compile:
        compile_package()
    tmp = Path(tempfile.mkdtemp(prefix="dq-bench-drain-"))
    try:
        env = base_env()
        port_file = tmp / "server-port"
        store = tmp / "server-store.jsonl"
        server = procs.start(
            [
                sys.executable,
                *("-m", "langfuse_dq.devserver", "--port", "0", "--quiet"),
                *("--port-file", str(port_file), "--store", str(store)),
            ],
            env,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the dev server did not start")
            time.sleep(0.02)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        queue_dir = str(tmp / "queue")
        client_env = dict(
            env,
            LANGFUSE_PUBLIC_KEY=PUBLIC_KEY,
            LANGFUSE_SECRET_KEY=SECRET_KEY,
            LANGFUSE_BASE_URL=url,
            LANGFUSE_DQ_DIR=queue_dir,
        )

        log(f"filling {queue_dir}: {result.events:,} events from {writers} writer(s)")
        started = time.monotonic()
        fillers = [
            procs.start(
                [
                    sys.executable,
                    *(str(SCRIPT), WRITER_COMMAND),
                    *("--traces", str(traces_per_writer), "--tag", f"w{w}"),
                ],
                dict(client_env, LANGFUSE_DQ_AUTOSPAWN="false"),
            )
            for w in range(writers)
        ]
        for proc in fillers:
            if proc.wait() != 0:
                raise RuntimeError(f"writer {proc.pid} exited with {proc.returncode}")
        result.fill_s = time.monotonic() - started
        journal = Path(queue_dir) / "journal"
        result.journal_bytes = sum(p.stat().st_size for p in journal.glob("*.seg"))
        result.pending_before = queue_pending(queue_dir)
        log(
            f"filled in {result.fill_s:.1f} s: {result.pending_before:,} events pending, "
            f"{result.journal_bytes / 1e6:.0f} MB of journal"
        )
        if result.pending_before != result.events:
            raise RuntimeError(f"expected {result.events} pending, found {result.pending_before}")
        if args.settle > 0:
            log(f"letting the queue settle for {args.settle:g} s")
            time.sleep(args.settle)
        result.settle_s = args.settle

        flusher_env = dict(client_env)
        if args.batch_size:
            flusher_env["LANGFUSE_BATCH_SIZE"] = str(args.batch_size)
        result.load_before = os.getloadavg()[0]
        server_cpu0 = proc_cpu(server.pid) or 0.0
        log("starting the flusher")
        t0 = time.monotonic()
        with open(tmp / "flusher.log", "ab") as flusher_log:
            flusher = procs.start(
                [
                    sys.executable,
                    *("-m", "langfuse_dq.flusher", "--dir", queue_dir, "--exit-when-idle"),
                ],
                flusher_env,
                stdout=subprocess.DEVNULL,
                stderr=flusher_log,
            )
        interval = args.sample_interval
        next_sample = 0.0
        next_log = 0.0
        counts: dict[str, int] = {}
        stats = Stats(url)
        while True:
            now = time.monotonic() - t0
            counts = stats.get()
            done = (counts.get("spans", 0) + counts.get("scores", 0)) / (
                expected_spans + expected_scores
            )
            if now >= next_sample:
                rss = proc_status(flusher.pid).get("VmRSS", 0)
                result.samples.append(Sample(now, done, rss))
                next_sample = now + interval
            if now >= next_log:
                log(f"  {now:6.1f} s: {done * 100:5.1f}% delivered")
                next_log = now + max(5.0, interval)
            if (
                counts.get("spans", 0) >= expected_spans
                and counts.get("scores", 0) >= expected_scores
            ):
                result.drain_s = time.monotonic() - t0
                break
            if flusher.poll() is not None:
                raise RuntimeError(f"the flusher exited early ({flusher.returncode})")
            if now > args.timeout:
                raise RuntimeError(f"not delivered after {args.timeout:g} s: {counts}")
            time.sleep(args.poll)
        result.server_cpu_s = (proc_cpu(server.pid) or 0.0) - server_cpu0
        while True:
            pending = queue_pending(queue_dir)
            if pending == 0 or time.monotonic() - t0 > args.timeout:
                result.pending_after = pending
                result.commit_s = time.monotonic() - t0
                break
            time.sleep(0.05)
        result.flusher_cpu_s = proc_cpu(flusher.pid)
        status = proc_status(flusher.pid)
        result.peak_rss_kb = status.get("VmHWM", 0)
        result.samples.append(Sample(time.monotonic() - t0, 1.0, status.get("VmRSS", 0)))
        result.load_after = os.getloadavg()[0]
        procs.stop(flusher)
        time.sleep(0.3)  # the server finishes writing its store
        result.counts = stats.get()
        stats.close()
        procs.stop(server)
        log("reconstructing request sizes from the server's store")
        result.sizes = reconstruct_requests(str(store))
        return result
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    return "\n".join(lines)


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "langfuse_dq"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (+ uncommitted changes)" if dirty else "")


def report(result: Result, args: argparse.Namespace) -> str:
    from langfuse_dq.config import DEFAULT_BATCH_SIZE

    batch = args.batch_size or DEFAULT_BATCH_SIZE
    out: list[str] = []
    out.append("langfuse-dq end-to-end drain benchmark (tests/bench/bench_drain.py)")
    out.append(
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
    )
    out.append(
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"{platform.platform()}"
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    out.append(f"cpus: {os.cpu_count()} (usable: {usable}); langfuse-dq: git {git_revision()}")
    out.append(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    out.append(
        f"load average (1 min) before / after the drain: {result.load_before:.2f} / "
        f"{result.load_after:.2f}"
    )
    out.append(
        f"queue: {result.events:,} events ({result.traces:,} traces x {EVENTS_PER_TRACE}: "
        f"trace, 3 spans + ends, generation + end, score) from {result.writers} writer(s), "
        f"{result.journal_bytes / 1e6:.0f} MB of journal, filled in {result.fill_s:.1f} s, "
        f"settled {result.settle_s:g} s"
    )
    out.append(f"flusher: batch_size {batch} events per request (requests capped at 3.5 MB)")
    out.append("")
    rate = result.events / result.drain_s if result.drain_s else 0.0
    rows = [
        ["events", f"{result.events:,}"],
        ["drain wall time (flusher start -> all at the server)", f"{result.drain_s:.2f} s"],
        ["throughput", f"{rate:,.0f} events/s"],
        ["... until pending == 0 (last commit)", f"{result.commit_s:.2f} s"],
        ["flusher CPU (user+sys, both threads)", _fmt(result.flusher_cpu_s, "s")],
        ["dev server CPU during the drain", _fmt(result.server_cpu_s, "s")],
        ["flusher peak RSS (VmHWM)", f"{result.peak_rss_kb / 1024:.1f} MB"],
        ["pending before / after", f"{result.pending_before:,} / {result.pending_after:,}"],
        [
            "server counts (spans, scores, requests, failed)",
            f"{result.counts.get('spans', 0):,}, {result.counts.get('scores', 0):,}, "
            f"{result.counts.get('requests', 0):,}, {result.counts.get('failed', 0):,}",
        ],
    ]
    out.append(table([[a, b] for a, b in rows], ["measure", "value"]))
    if result.sizes is not None:
        out.append("")
        out.append("requests, rebuilt from the server's store (sizes in kB = 1000 bytes)")
        out.append(
            table(
                [
                    result.sizes.otlp.row("OTLP /otel/v1/traces (gzip)"),
                    result.sizes.ingestion.row("ingestion (scores)"),
                ],
                ["endpoint", "requests", "items/req", "raw kB/req", "gzip kB/req", "max raw kB"],
            )
        )
    out.append("")
    out.append("flusher RSS over time")
    step = max(1, len(result.samples) // args.rss_rows)
    picked = result.samples[::step]
    if result.samples and picked[-1] is not result.samples[-1]:
        picked.append(result.samples[-1])
    out.append(
        table(
            [[f"{s.t:.1f}", f"{s.delivered * 100:.1f}%", f"{s.rss_kb / 1024:.1f}"] for s in picked],
            ["t (s)", "delivered", "RSS (MB)"],
        )
    )
    early = [s.rss_kb for s in result.samples if s.delivered <= 0.2]
    if early and result.events >= 500_000:
        out.append(
            f"max RSS while the first 20% were delivered: {max(early) / 1024:.1f} MB; "
            f"peak over the whole drain (VmHWM): {result.peak_rss_kb / 1024:.1f} MB"
        )
    return "\n".join(out)


def _fmt(value: Optional[float], unit: str) -> str:
    return "n/a" if value is None else f"{value:.2f} {unit}"


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == WRITER_COMMAND:
        wp = argparse.ArgumentParser(prog="bench_drain.py _writer")
        wp.add_argument("--traces", type=int, required=True)
        wp.add_argument("--tag", default="t")
        wargs = wp.parse_args(argv[1:])
        return writer_main(wargs.traces, wargs.tag)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--writers", type=int, default=1, help="writer processes filling")
    parser.add_argument("--batch-size", type=int, default=0, help="LANGFUSE_BATCH_SIZE")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds between fill, drain")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--poll", type=float, default=0.0, help="stats poll (s); 0: auto")
    parser.add_argument("--sample-interval", type=float, default=0.0, help="RSS (s); 0: auto")
    parser.add_argument("--rss-rows", type=int, default=20)
    parser.add_argument(
        "--no-compile", action="store_true", help="do not write the package's bytecode first"
    )
    args = parser.parse_args(argv)
    big = args.events >= 500_000
    args.poll = args.poll or (0.25 if big else 0.025)
    args.sample_interval = args.sample_interval or (1.0 if big else 0.1)
    result = run(args)
    sys.stdout.write(report(result, args) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
