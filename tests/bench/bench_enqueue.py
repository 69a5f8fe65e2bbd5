"""Enqueue latency: langfuse-dq against the official Langfuse SDKs, per call, on this machine.

What is measured
----------------
The time the *application's thread* spends inside each tracing call, taken with
``time.perf_counter_ns()`` immediately before and after the call. Three calls per iteration,
with the same ~500-byte JSON payload (``PAYLOAD``) as ``input`` (and as ``output`` at the end):

* langfuse-dq (this repository), ``Langfuse(..., autospawn=False)``: ``lf.trace(input=P)``,
  ``trace.span(input=P)``, ``span.end(output=P)``. Each returns once the encoded event is in
  the process's journal segment (one ``os.write``; page cache, no fsync). No flusher runs: this
  is the durable enqueue alone, nothing is sent.
* langfuse 2.60.10 (in-memory queue, background consumer thread): the same three calls. The
  consumer thread posts batches to ``/api/public/ingestion`` of a local dev server meanwhile.
* langfuse 5.0.4 (OpenTelemetry): "trace()" is ``lf.start_observation(input=P)`` (the root
  span), "span()" is ``root.start_observation(input=P)`` (a child), "span.end()" is
  ``child.update(output=P)`` followed by ``child.end()`` (both timed, since the other clients
  send the output with the end). ``root.end()`` follows, untimed. The BatchSpanProcessor thread
  exports to the dev server's OTLP endpoint meanwhile.

Two shapes, each in fresh processes (this file re-run in driver mode, by the project's Python
for langfuse-dq and by a dedicated virtualenv's Python for each official SDK):

(a) 1 process in a tight loop: ``--iterations`` iterations (default 20,000) of trace+span+end.
(b) 4 processes at once (for langfuse-dq: writing to the same queue directory), each paced at
    2,000 calls/s: call ``k`` is scheduled at ``start + k/2000`` s (sleep, then spin for the
    last 100 us) and only the call itself is timed, never the wait. 20,001 calls per process
    (about 10 s); the latencies of the four processes are merged per call type.

Every timed phase follows an untimed warm-up (imports, first segment, first connections) and
starts when all its processes are ready. The garbage collector stays on, as in an application.
Percentiles are nearest-rank over all timed calls. Log records of WARNING and above emitted
during the timed phase (e.g. an SDK dropping spans because its queue is full) are counted and
reported under the table, since a dropped event makes the call that dropped it cheaper.

The official SDKs live in virtualenvs created on first use under
``~/.cache/langfuse-dq-bench/venv-<version>`` (``--cache-dir``), with ``pip install
langfuse==<version>`` from PyPI, and reused afterwards. The dev server
(``python -m langfuse_dq.devserver``) listens on 127.0.0.1; every process started here is
stopped here, and every temporary directory (queue directories, the server's store) deleted.

How to run (with the project's virtualenv, the full run takes several minutes)::

    .venv/bin/python tests/bench/bench_enqueue.py
    .venv/bin/python tests/bench/bench_enqueue.py --quick --skip-official   # smoke run
    .venv/bin/python tests/bench/bench_enqueue.py --json tests/bench/results-enqueue.local.json

The table goes to stdout, progress to stderr. ``results-enqueue.txt`` beside this file is the
record of a full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Optional

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parents[2]
DRIVER_COMMAND = "_driver"

PUBLIC_KEY = "pk-lf-bench"
SECRET_KEY = "sk-lf-bench"
PAYLOAD_BYTES = 500
CALLS = ("trace", "span", "end")
CALL_LABELS = {"trace": "trace()", "span": "span()", "end": "span.end()"}
OFFICIAL_VERSIONS = ("2.60.10", "5.0.4")
DEFAULT_CACHE_DIR = Path("~/.cache/langfuse-dq-bench")

WRITERS = 4
RATE = 2000.0  # calls per second per process, in shape (b)
SPIN_S = 100e-6  # spin (rather than sleep) for the last 100 us before a scheduled call
START_DELAY_S = 0.25  # between "all ready" and the first timed call
READY_TIMEOUT_S = 180.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many iterations each shape runs (an iteration is trace + span + end)."""

    tight_iterations: int
    tight_warmup: int
    paced_iterations: int
    paced_warmup: int


FULL = Sizes(tight_iterations=20_000, tight_warmup=1_000, paced_iterations=6_667, paced_warmup=300)
QUICK = Sizes(tight_iterations=2_000, tight_warmup=100, paced_iterations=667, paced_warmup=50)


def make_payload() -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly ``PAYLOAD_BYTES`` bytes."""
    payload: dict[str, Any] = {
        "question": "How do I rotate the API keys of a project without downtime?",
        "context": ["doc-17", "doc-42", "doc-99"],
        "user": {"id": "u-123", "plan": "team"},
        "text": "",
    }
    size = len(json.dumps(payload, separators=(",", ":")))
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20
    payload["text"] = filler[: PAYLOAD_BYTES - size]
    assert len(json.dumps(payload, separators=(",", ":"))) == PAYLOAD_BYTES
    return payload


# ============================================================================================
# Driver: runs inside one writer process (any of the three interpreters); stdlib only here.
# ============================================================================================


@dataclasses.dataclass
class Ops:
    """One implementation's calls: ``end(span(trace()))``, then ``finish(root)`` untimed."""

    version: str
    trace: Callable[[], Any]
    span: Callable[[Any], Any]
    end: Callable[[Any], Any]
    finish: Callable[[Any], None] = lambda _root: None
    dropped: Callable[[], int] = lambda: 0
    close: Callable[[], None] = lambda: None


def _ops_dq(host: str, queue_dir: str) -> Ops:
    import langfuse_dq
    from langfuse_dq.client import Langfuse

    lf = Langfuse(
        public_key=PUBLIC_KEY,
        secret_key=SECRET_KEY,
        host=host,
        queue_dir=queue_dir,
        autospawn=False,
    )
    payload = make_payload()

    def dropped() -> int:
        queue = getattr(lf, "_queue", None)
        return int(getattr(queue, "dropped_total", 0))

    return Ops(
        version=langfuse_dq.__version__,
        trace=lambda: lf.trace(name="bench", input=payload),
        span=lambda tr: tr.span(name="step", input=payload),
        end=lambda sp: sp.end(output=payload),
        dropped=dropped,
        close=lambda: lf.shutdown(timeout=1.0),
    )


def _ops_official(host: str) -> Ops:
    from importlib.metadata import version

    from langfuse import Langfuse

    installed = version("langfuse")
    payload = make_payload()
    if int(installed.split(".")[0]) < 3:
        lf2: Any = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, host=host)
        return Ops(
            version=installed,
            trace=lambda: lf2.trace(name="bench", input=payload),
            span=lambda tr: tr.span(name="step", input=payload),
            end=lambda sp: sp.end(output=payload),
        )

    lf: Any = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, base_url=host)
    drop_counters = _count_otel_drops(lf)
    start_root = getattr(lf, "start_observation", None) or lf.start_span

    def start_child(root: Any) -> Any:
        start = getattr(root, "start_observation", None) or root.start_span
        return start(name="step", input=payload)

    def end_child(child: Any) -> None:
        child.update(output=payload)
        child.end()

    return Ops(
        version=installed,
        trace=lambda: start_root(name="bench", input=payload),
        span=start_child,
        end=end_child,
        finish=lambda root: root.end(),
        dropped=lambda: sum(c.dropped for c in drop_counters) if drop_counters else -1,
    )


class _OtelDropCounter:
    """Stands in for a BatchProcessor's metrics object to count the spans it drops.

    OpenTelemetry logs "Queue full, dropping" at most once per 20 s (DuplicateFilter), so the
    log does not tell how many spans were dropped; its ``drop_items`` hook, called only when a
    span is dropped, does.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dropped = 0

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        if error_type == "queue_full":
            self.dropped += count
        self.inner.drop_items(count, error_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _count_otel_drops(lf: Any) -> list[_OtelDropCounter]:
    """Hook a drop counter into the SDK's batch span processors ([] if the layout differs)."""
    counters = []
    try:
        provider = lf._resources.tracer_provider
        for processor in provider._active_span_processor._span_processors:
            batch = getattr(processor, "_batch_processor", None)
            if batch is not None and hasattr(batch, "_metrics"):
                counter = _OtelDropCounter(batch._metrics)
                batch._metrics = counter
                counters.append(counter)
    except AttributeError:
        return []
    return counters


class _WarningCounter(logging.Handler):
    """Counts WARNING+ log records by message template (and keeps them off stderr)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name}: {record.msg}"[:120]
        self.counts[key] = self.counts.get(key, 0) + 1


def _wait_until(deadline: float) -> float:
    """Sleep, then spin, until ``perf_counter() >= deadline``; return how late that was (s)."""
    perf_counter = time.perf_counter
    while True:
        remaining = deadline - perf_counter()
        if remaining <= 0.0:
            return -remaining
        if remaining > SPIN_S:
            time.sleep(remaining - SPIN_S)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in [0, 1])."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _timed_loop(
    ops: Ops, iterations: int, rate: float, start: float
) -> tuple[dict[str, list[int]], list[float], float]:
    """Run the timed phase; return latencies (ns) per call, start lateness (s), elapsed (s)."""
    perf_counter_ns = time.perf_counter_ns
    lat = {name: [0] * iterations for name in CALLS}
    lat_trace, lat_span, lat_end = lat["trace"], lat["span"], lat["end"]
    late: list[float] = []
    paced = rate > 0.0
    interval = 1.0 / rate if paced else 0.0
    _wait_until(start)
    k = 0
    for i in range(iterations):
        if paced:
            late.append(_wait_until(start + k * interval))
        t0 = perf_counter_ns()
        root = ops.trace()
        t1 = perf_counter_ns()
        lat_trace[i] = t1 - t0
        if paced:
            late.append(_wait_until(start + (k + 1) * interval))
        t0 = perf_counter_ns()
        child = ops.span(root)
        t1 = perf_counter_ns()
        lat_span[i] = t1 - t0
        if paced:
            late.append(_wait_until(start + (k + 2) * interval))
        t0 = perf_counter_ns()
        ops.end(child)
        t1 = perf_counter_ns()
        lat_end[i] = t1 - t0
        ops.finish(root)
        k += 3
    return lat, late, time.perf_counter() - start


def driver_main(argv: list[str]) -> int:
    """One writer: set up, warm up, say READY, wait for GO, run the timed loop, write JSON."""
    parser = argparse.ArgumentParser(prog=f"bench_enqueue.py {DRIVER_COMMAND}")
    parser.add_argument("--impl", choices=("dq", "official"), required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--queue-dir", default="")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="calls/s; 0 for a tight loop")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    counter = _WarningCounter()
    logging.getLogger().addHandler(counter)
    ops = _ops_dq(args.host, args.queue_dir) if args.impl == "dq" else _ops_official(args.host)
    for _ in range(args.warmup):
        root = ops.trace()
        ops.end(ops.span(root))
        ops.finish(root)
    warmup_warnings = dict(counter.counts)
    counter.counts.clear()
    dropped_before = ops.dropped()
    collections = [0, 0, 0]

    def count_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collections[info["generation"]] += 1

    gc.callbacks.append(count_collection)

    sys.stdout.write("READY\n")
    sys.stdout.flush()
    command = sys.stdin.readline().split()
    if len(command) != 2 or command[0] != "GO":
        return 2
    start = time.perf_counter() + (float(command[1]) - time.time())
    cpu_before = os.times()
    lat, late, elapsed = _timed_loop(ops, args.iterations, args.rate, start)
    cpu_after = os.times()
    gc.callbacks.remove(count_collection)

    late.sort()
    result = {
        "version": ops.version,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "latencies_ns": lat,
        "elapsed_s": elapsed,
        "calls_per_s": 3 * args.iterations / elapsed if elapsed > 0 else 0.0,
        "late_p50_us": _percentile(late, 0.5) * 1e6 if late else None,
        "late_p99_us": _percentile(late, 0.99) * 1e6 if late else None,
        "late_max_us": late[-1] * 1e6 if late else None,
        # CPU of the whole writer process (the SDK's own threads included) in the timed phase
        "cpu_s": (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system),
        "gc_collections": collections,
        "warnings": counter.counts,
        "warmup_warnings": warmup_warnings,
        "dropped": ops.dropped() - dropped_before,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, args.out)
    ops.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the official SDKs would flush their whole backlog to the dev
    # server at exit, which measures nothing and can take a long time.
    os._exit(0)


# ============================================================================================
# Orchestrator
# ============================================================================================


@dataclasses.dataclass(frozen=True)
class Impl:
    """An implementation under test and how to start its writer processes."""

    key: str
    label: str
    python: str
    python_flags: tuple[str, ...]
    env: dict[str, str]
    driver_impl: str
    uses_queue_dir: bool


@dataclasses.dataclass
class Row:
    """One line of the table: percentiles of one call type in one run, in microseconds."""

    implementation: str
    shape: str
    call: str
    count: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float


@dataclasses.dataclass
class RunResult:
    """What one (implementation, shape) run produced."""

    implementation: str
    shape: str
    processes: list[dict[str, Any]]
    rows: list[Row]
    seconds: float
    server_cpu_s: Optional[float] = None


class Children:
    """Every process this script starts, so that all of them are stopped on the way out."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(cmd, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        """Terminate one child by pid (SIGTERM, then SIGKILL after ``grace`` s) and reap it."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)


def log(message: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def clean_env(extra_pythonpath: Optional[str] = None) -> dict[str, str]:
    """The environment for children: no LANGFUSE_*/OTEL_* settings, no foreign PYTHONPATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANGFUSE_", "OTEL_")) and k not in {"PYTHONPATH", "PYTHONHOME"}
    }
    if extra_pythonpath:
        env["PYTHONPATH"] = extra_pythonpath
    return env


def venv_langfuse_version(python: Path) -> Optional[str]:
    """The langfuse version installed for ``python``, or None."""
    proc = subprocess.run(
        [str(python), "-I", "-c", "import importlib.metadata as m; print(m.version('langfuse'))"],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_venv(version: str, cache_dir: Path) -> Path:
    """A virtualenv with ``langfuse==version`` under ``cache_dir`` (reused when complete)."""
    venv = cache_dir / f"venv-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    if marker.is_file() and python.exists() and venv_langfuse_version(python) == version:
        log(f"reusing {venv}")
        return python
    if venv.exists():
        shutil.rmtree(venv)
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"creating {venv} and installing langfuse=={version} from PyPI")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"langfuse=={version}",
        ],
        check=True,
        env=clean_env(),
    )
    installed = venv_langfuse_version(python)
    if installed != version:
        raise RuntimeError(f"{venv}: expected langfuse {version}, found {installed}")
    marker.write_text(version + "\n", encoding="ascii")
    return python


def start_devserver(children: Children, workdir: Path) -> tuple[subprocess.Popen[Any], str]:
    """Start the langfuse-dq dev server on a free port of 127.0.0.1; return it and its URL."""
    port_file = workdir / "devserver.port"
    log_path = workdir / "devserver.log"
    with open(log_path, "wb") as log_fh:
        proc = children.start(
            [
                sys.executable,
                "-m",
                "langfuse_dq.devserver",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--store",
                str(workdir / "devserver-store.jsonl"),
                "--quiet",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=clean_env(str(REPO_ROOT)),
        )
    deadline = time.monotonic() + 30.0
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dev server did not start:\n{tail}")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{int(port_file.read_text().strip())}"


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's stdout, or '' after ``timeout`` seconds or at EOF."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def run_writers(
    children: Children,
    impl: Impl,
    shape: str,
    processes: int,
    iterations: int,
    warmup: int,
    rate: float,
    host: str,
    workdir: Path,
) -> RunResult:
    """Start ``processes`` writers, release them together, collect and merge their latencies."""
    began = time.monotonic()
    queue_dir = (
        tempfile.mkdtemp(prefix=f"bench-{impl.key}-", suffix=".dq") if impl.uses_queue_dir else ""
    )
    procs: list[tuple[subprocess.Popen[Any], Path, Path]] = []
    try:
        for index in range(processes):
            out = workdir / f"{impl.key}-{shape[:3]}-{index}.json"
            err = workdir / f"{impl.key}-{shape[:3]}-{index}.stderr"
            cmd = [
                impl.python,
                *impl.python_flags,
                str(SCRIPT),
                DRIVER_COMMAND,
                "--impl",
                impl.driver_impl,
                "--host",
                host,
                "--queue-dir",
                queue_dir,
                "--iterations",
                str(iterations),
                "--warmup",
                str(warmup),
                "--rate",
                str(rate),
                "--out",
                str(out),
            ]
            with open(err, "wb") as err_fh:
                proc = children.start(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err_fh,
                    env=impl.env,
                    text=True,
                    cwd=str(workdir),
                )
            procs.append((proc, out, err))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for proc, _out, err in procs:
            assert proc.stdout is not None
            line = _read_line(proc.stdout, max(0.0, deadline - time.monotonic()))
            if line.strip() != "READY":
                raise RuntimeError(f"{impl.label} writer not ready ({line!r}):\n{_tail(err)}")
        go = f"GO {time.time() + START_DELAY_S!r}\n"
        for proc, _out, _err in procs:
            assert proc.stdin is not None
            proc.stdin.write(go)
            proc.stdin.flush()
        expected = 3 * iterations / rate if rate else 3 * iterations * 200e-6
        results: list[dict[str, Any]] = []
        for proc, out, err in procs:
            code = proc.wait(timeout=expected * 5 + 120.0)
            if code != 0 or not out.exists():
                raise RuntimeError(f"{impl.label} writer exited with {code}:\n{_tail(err)}")
            results.append(json.loads(out.read_text(encoding="utf-8")))
            children.stop(proc)
    finally:
        for proc, _out, _err in procs:
            children.stop(proc)
        if queue_dir:
            shutil.rmtree(queue_dir, ignore_errors=True)

    version = results[0]["version"]
    label = impl.label if version in impl.label else f"{impl.label} {version}"
    rows = []
    for call in CALLS:
        merged = sorted(v for r in results for v in r["latencies_ns"][call])
        rows.append(
            Row(
                implementation=label,
                shape=shape,
                call=CALL_LABELS[call],
                count=len(merged),
                p50_us=_percentile(merged, 0.5) / 1e3,
                p99_us=_percentile(merged, 0.99) / 1e3,
                p999_us=_percentile(merged, 0.999) / 1e3,
                max_us=merged[-1] / 1e3,
            )
        )
    for r in results:
        del r["latencies_ns"]
    return RunResult(label, shape, results, rows, time.monotonic() - began)


def git_description() -> str:
    """``<short commit>`` of the repository, with a note when langfuse_dq/ has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "langfuse_dq"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"git {head}" + (" + uncommitted changes in langfuse_dq/" if dirty else "")


def format_report(header: list[str], runs: list[RunResult], notes: list[str]) -> str:
    """The printed report: header lines, the table, notes."""
    columns = ("implementation", "shape", "call", "count", "p50", "p99", "p99.9", "max")
    table: list[tuple[str, ...]] = [
        (
            row.implementation,
            row.shape,
            row.call,
            str(row.count),
            f"{row.p50_us:.1f}",
            f"{row.p99_us:.1f}",
            f"{row.p999_us:.1f}",
            f"{row.max_us:.1f}",
        )
        for run in runs
        for row in run.rows
    ]
    widths = [
        max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)
    ]

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [*header, "", "latency per call in microseconds (us)", ""]
    out.append(line(columns))
    out.append(line(tuple("-" * w for w in widths)))
    previous = ""
    for run in runs:
        if previous and previous != run.implementation:
            out.append("")
        previous = run.implementation
        out.extend(line(t) for t in table if t[0] == run.implementation and t[1] == run.shape)
    out.extend(["", "notes:", *(f"  {n}" for n in notes)] if notes else [])
    return "\n".join(out) + "\n"


def run_notes(run: RunResult, paced: bool) -> list[str]:
    """Pacing, drops and warnings of one run, as lines for the notes section."""
    notes = []
    name = f"{run.implementation}, {run.shape}"
    procs = run.processes
    if paced:
        rates = ", ".join(f"{p['calls_per_s']:.0f}" for p in procs)
        late99 = max(p["late_p99_us"] for p in procs)
        late_max = max(p["late_max_us"] for p in procs)
        notes.append(
            f"{name}: achieved calls/s per process {rates}; start of a call after its slot: "
            f"p99 {late99:.0f} us, max {late_max / 1e3:.1f} ms"
        )
    else:
        notes.append(
            f"{name}: {procs[0]['calls_per_s']:.0f} calls/s ({procs[0]['elapsed_s']:.1f} s)"
        )
    cpu = ", ".join(f"{100 * p['cpu_s'] / p['elapsed_s']:.0f}%" for p in procs)
    gen2 = sum(p["gc_collections"][2] for p in procs)
    server = "" if run.server_cpu_s is None else f"; dev server used {run.server_cpu_s:.1f} CPU-s"
    notes.append(
        f"{name}: writer CPU (all threads) {cpu} of a core; {gen2} full (gen 2) collections{server}"
    )
    dropped = [p.get("dropped", 0) for p in procs]
    if any(d < 0 for d in dropped):
        notes.append(f"{name}: events dropped by the client: unknown")
    elif sum(dropped):
        notes.append(f"{name}: {sum(dropped)} events dropped by the client (queue full)")
    warnings: dict[str, int] = {}
    for p in procs:
        for key, count in p["warnings"].items():
            warnings[key] = warnings.get(key, 0) + count
    for key, count in sorted(warnings.items(), key=lambda kv: -kv[1]):
        notes.append(f"{name}: {count} x log warning {key!r}")
    return notes


def main(argv: Optional[list[str]] = None) -> int:
    """Set up, measure every (implementation, shape), print the table, clean up."""
    parser = argparse.ArgumentParser(
        description="Per-call enqueue latency of langfuse-dq and the official Langfuse SDKs."
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument(
        "--skip-official", action="store_true", help="measure langfuse-dq only (no venvs)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="where the official SDKs' virtualenvs live (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    began = time.monotonic()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    impls = [
        Impl(
            key="dq",
            label="langfuse-dq",
            python=sys.executable,
            python_flags=(),
            env=clean_env(str(REPO_ROOT)),
            driver_impl="dq",
            uses_queue_dir=True,
        )
    ]
    if not args.skip_official:
        cache_dir = Path(args.cache_dir).expanduser()
        for version in OFFICIAL_VERSIONS:
            python = ensure_venv(version, cache_dir)
            impls.append(
                Impl(
                    key=f"lf{version.split('.')[0]}",
                    label=f"langfuse {version}",
                    python=str(python),
                    python_flags=("-I",),
                    env=clean_env(),
                    driver_impl="official",
                    uses_queue_dir=False,
                )
            )

    shape_a = "(a) 1 proc, tight"
    shape_b = f"(b) {WRITERS} proc, {RATE:.0f}/s each"
    runs: list[RunResult] = []
    notes: list[str] = []
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix="bench-enqueue-"))
    try:
        devserver, host = start_devserver(children, workdir)
        log(f"dev server pid {devserver.pid} at {host}")
        for impl in impls:
            plans = (
                (shape_a, 1, sizes.tight_iterations, sizes.tight_warmup, 0.0),
                (shape_b, WRITERS, sizes.paced_iterations, sizes.paced_warmup, RATE),
            )
            for shape, processes, iterations, warmup, rate in plans:
                log(f"{impl.label}: {shape}, {processes} x {iterations} iterations")
                server_cpu = process_cpu_seconds(devserver.pid)
                run = run_writers(
                    children, impl, shape, processes, iterations, warmup, rate, host, workdir
                )
                server_cpu_after = process_cpu_seconds(devserver.pid)
                if server_cpu is not None and server_cpu_after is not None:
                    run.server_cpu_s = server_cpu_after - server_cpu
                log(f"  done in {run.seconds:.1f} s")
                runs.append(run)
                notes.extend(run_notes(run, paced=rate > 0))
                time.sleep(0.5)  # let the dev server finish what the last writers sent
        children.stop(devserver)
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - began
    official_pythons = sorted({p["python"] for run in runs for p in run.processes})
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    header = [
        "langfuse-dq enqueue latency benchmark (tests/bench/bench_enqueue.py)",
        f"date: {now.isoformat(timespec='seconds')}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"(writers: {', '.join(official_pythons)}); {platform.platform()}",
        f"cpus: {os.cpu_count()}"
        + (
            f" (usable: {len(os.sched_getaffinity(0))})" if hasattr(os, "sched_getaffinity") else ""
        ),
        f"langfuse-dq: {git_description()}",
        "load average (1 min) before / after the run: "
        + ("n/a" if load_before is None else f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"),
        f"mode: {'quick' if args.quick else 'full'}; payload: {PAYLOAD_BYTES}-byte JSON object as "
        f"input (and output at end); warm-up excluded: {sizes.tight_warmup} iterations (a), "
        f"{sizes.paced_warmup} (b)",
        "calls: langfuse-dq, langfuse 2.x: lf.trace(), trace.span(), span.end(output=);",
        "       langfuse 5.x: lf.start_observation(), root.start_observation(),"
        " child.update(output=) + child.end() (root.end() untimed)",
    ]
    report = format_report(header, runs, notes)
    report += f"\ntotal wall time: {elapsed:.0f} s\n"
    sys.stdout.write(report)
    sys.stdout.flush()
    if args.json:
        data = {
            "date": now.isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "langfuse_dq": git_description(),
            "mode": "quick" if args.quick else "full",
            "sizes": dataclasses.asdict(sizes),
            "payload_bytes": PAYLOAD_BYTES,
            "wall_time_s": elapsed,
            "rows": [dataclasses.asdict(row) for run in runs for row in run.rows],
            "runs": [
                {
                    "implementation": run.implementation,
                    "shape": run.shape,
                    "seconds": run.seconds,
                    "server_cpu_s": run.server_cpu_s,
                    "processes": run.processes,
                }
                for run in runs
            ],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == DRIVER_COMMAND:
        sys.exit(driver_main(sys.argv[2:]))
    sys.exit(main())
