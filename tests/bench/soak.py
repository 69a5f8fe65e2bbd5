"""Soak: writers, a flaky server and a flusher killed every 30 s, for minutes. Nothing lost.

Not part of the test suite (it runs for minutes); run it by hand:

    python tests/bench/soak.py --minutes 10            # the documented run
    python tests/bench/soak.py --minutes 1 --quick     # a short smoke run

It starts the dev server with fault injection (``--fail-rate`` of requests answered 500 at
random), ``--writers`` processes writing fake LLM requests (a trace with two spans, a
generation and a score) at a steady rate into one queue directory, with autospawn on; every
``--kill-every`` seconds it SIGKILLs the flusher (a writer spawns a new one). Every few
seconds it samples the RSS of each process and the disk used by the queue. At the end it
drains what is left and checks that every event written was delivered (or quarantined or
counted as dropped), and prints the figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from langfuse_dq.devserver import load_store
from langfuse_dq.queuedir import open_queue_dir
from langfuse_dq.spawn import flusher_info
from langfuse_dq.stats import queue_stats

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from langfuse_dq import Langfuse, Usage
    tag, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    lf = Langfuse(flush_interval=0.5)
    start = time.monotonic()
    n = events = 0
    while time.monotonic() - start < seconds:
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        trace = lf.trace(name=f"{tag}-{n}", input={"q": "x" * 200}, user_id=f"u{n % 10}")
        with trace.span(name="retrieve", input={"k": n}) as span:
            span.span(name="embed").end(output={"dims": 8})
        gen = trace.generation(name="llm", model="m", input=[{"role": "user", "content": "hi"}])
        gen.end(output={"content": "ok"}, usage=Usage(input=5, output=7, total=12))
        trace.score(name="quality", value=0.5)
        n += 1
        events += 8
    lf.shutdown()
    print(json.dumps({"traces": n, "events": events}))
    """
)


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, or (0, 0) when the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def disk_usage(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def faults(url: str, **spec: Any) -> None:
    request = urllib.request.Request(
        url + "/_dq/faults", data=json.dumps(spec).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument(
        "--rate", type=float, default=25.0, help="fake requests per second per writer"
    )
    parser.add_argument("--fail-rate", type=float, default=0.10)
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="smaller rates for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate = min(args.rate, 10.0)

    workdir = tempfile.mkdtemp(prefix="langfuse-dq-soak-")
    queue_dir = os.path.join(workdir, "queue")
    store = os.path.join(workdir, "store.jsonl")
    port_file = os.path.join(workdir, "port")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE_")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "langfuse_dq.devserver",
            "--port",
            "0",
            "--port-file",
            port_file,
            "--store",
            store,
            "--faults",
            "--quiet",
        ],
        env=base_env,
        stdout=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[str]] = []
    samples: list[dict[str, Any]] = []
    peak: dict[str, int] = collections.defaultdict(int)
    kills = 0
    try:
        while not os.path.exists(port_file):
            time.sleep(0.05)
        url = f"http://127.0.0.1:{Path(port_file).read_text()}"
        faults(url, fail_rate=args.fail_rate)
        env = dict(
            base_env,
            LANGFUSE_PUBLIC_KEY="pk-lf-soak",
            LANGFUSE_SECRET_KEY="sk-lf-soak-local",
            LANGFUSE_BASE_URL=url,
            LANGFUSE_DQ_DIR=queue_dir,
            LANGFUSE_DQ_IDLE_EXIT="10",
        )
        seconds = args.minutes * 60
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, f"w{k}", str(seconds), str(args.rate)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(args.writers)
        ]
        next_kill = started + args.kill_every
        next_sample = started
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            qd = open_queue_dir(queue_dir, create=False) if os.path.isdir(queue_dir) else None
            if now >= next_kill and qd is not None:
                next_kill += args.kill_every
                pid, alive = flusher_info(qd)
                if pid and alive:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            if now >= next_sample and qd is not None:
                next_sample += args.sample_every
                row: dict[str, Any] = {
                    "t": round(now - started),
                    "disk_mb": disk_usage(queue_dir) / 1e6,
                }
                row["pending"] = queue_stats(qd)["pending"]
                for k, proc in enumerate(procs):
                    rss, hwm = rss_kb(proc.pid)
                    peak[f"writer {k}"] = max(peak[f"writer {k}"], hwm)
                pid, _ = flusher_info(qd)
                if pid:
                    rss, hwm = rss_kb(pid)
                    row["flusher_rss_mb"] = rss / 1024
                    peak["flusher (each run)"] = max(peak["flusher (each run)"], hwm)
                peak["dev server"] = max(peak["dev server"], rss_kb(server.pid)[1])
                samples.append(row)
                print(json.dumps(row), flush=True)
            time.sleep(0.2)
        reports = [json.loads((p.communicate()[0] or "{}").strip().splitlines()[-1]) for p in procs]
        written = sum(r["events"] for r in reports)
        traces = sum(r["traces"] for r in reports)
        print(
            f"writers done after {time.monotonic() - started:.0f}s; draining the rest", flush=True
        )
        drain = subprocess.run(
            [sys.executable, "-m", "langfuse_dq", "flush", "--timeout", "600", "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        qd = open_queue_dir(queue_dir, create=False)
        stats = queue_stats(qd)
        pid, alive = flusher_info(qd)
        if pid and alive:
            os.kill(pid, signal.SIGTERM)
        records = load_store(store)
        spans = collections.Counter(r["span"]["spanId"] for r in records if r.get("kind") == "span")
        scores = collections.Counter(r["event"]["id"] for r in records if r.get("kind") == "event")
        duplicates = sum(n - 1 for n in spans.values()) + sum(n - 1 for n in scores.values())
        expected_spans = traces * 4  # root, retrieve, embed, llm
        lost_spans = expected_spans - len(spans)
        lost_scores = traces - len(scores)
        print()
        print(
            f"duration           {args.minutes:g} min, "
            f"{args.writers} writers x {args.rate:g} requests/s"
        )
        print(f"server failures    {args.fail_rate:.0%} of requests answered 500 at random")
        print(f"flusher kills      {kills} (SIGKILL every {args.kill_every:g}s)")
        print(f"events written     {written:,} ({traces:,} traces)")
        print(
            f"delivered          {stats['delivered']:,} events: "
            f"{len(spans):,} spans, {len(scores):,} scores"
        )
        print(
            f"duplicates         {duplicates:,} "
            f"(duplicate_risk counted: {stats['duplicate_risk']:,})"
        )
        print(f"retried            {stats['retried']:,}")
        print(f"quarantined        {stats['quarantined']:,}")
        print(f"dropped            {stats['dropped']:,} {stats['dropped_by_reason'] or ''}")
        print(f"pending at the end {stats['pending']:,}; final flush exit {drain.returncode}")
        print(f"missing            {lost_spans:,} spans, {lost_scores:,} scores")
        print(
            "peak RSS (VmHWM)   "
            + ", ".join(f"{k}: {v / 1024:.0f} MB" for k, v in sorted(peak.items()))
        )
        if samples:
            print(
                f"disk used          max {max(s['disk_mb'] for s in samples):.1f} MB during the run"
            )
        ok = lost_spans == 0 and lost_scores == 0 and stats["pending"] == 0
        print("RESULT: nothing lost" if ok else "RESULT: LOSS DETECTED")
        return 0 if ok else 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.terminate()
        server.wait(timeout=10)
        if os.environ.get("SOAK_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
