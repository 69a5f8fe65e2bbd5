"""``langfuse-dq demo``: the whole path, end to end, with no account and nothing else running.

Starts the dev server on a free port, runs several writer processes that each make small fake
"LLM requests" (a trace, a retrieval span with a nested step, a generation with usage, a
score), lets the flusher they spawn deliver everything, and prints what arrived.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Optional

import click

from ..client import Langfuse
from ..devserver import load_store, make_server
from ..queuedir import open_queue_dir
from ..spawn import flusher_info
from ..stats import queue_stats
from .common import EXIT_FAILED, CliError, common_options

#: The demo's own local-only keys: the dev server accepts any keys.
DEMO_PUBLIC_KEY = "pk-lf-demo"
DEMO_SECRET_KEY = "sk-lf-demo-local-only"  # noqa: S105 (not a secret: only the dev server sees it)
EVENTS_PER_REQUEST = 10  # trace + its update, 3 observations x (create + end), 1 update, score
SPANS_PER_REQUEST = 4  # the trace's root span and its three observations

WRITER = textwrap.dedent(
    """
    import random, sys, time
    from langfuse_dq import Langfuse, Usage
    writer, requests = int(sys.argv[1]), int(sys.argv[2])
    lf = Langfuse()
    for i in range(requests):
        question = f"question {i} from writer {writer}"
        trace = lf.trace(name="demo-request", user_id=f"user-{i % 7}", session_id=f"s-{writer}",
                         input={"question": question}, tags=["demo"], metadata={"writer": writer})
        with trace.span(name="retrieve", input={"query": question}) as span:
            span.span(name="embed", input={"text": question}).end(output={"dims": 1536})
            span.update(output={"documents": ["doc-1", "doc-2"]})
        generation = trace.generation(name="llm", model="gpt-4o-mini",
                                      model_parameters={"temperature": 0.2},
                                      input=[{"role": "user", "content": question}])
        generation.end(output={"role": "assistant", "content": "42"},
                       usage=Usage(input=12, output=3, total=15, total_cost=0.0001))
        trace.update(output={"answer": "42"})
        trace.score(name="quality", value=random.random())
    lf.shutdown()
    """
)


@click.command()
@click.option("--writers", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--requests", "per_writer", type=click.IntRange(1, 100_000), default=250, show_default=True
)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@common_options
def demo(
    queue_dir: Optional[str], debug: bool, writers: int, per_writer: int, timeout: float
) -> None:
    """Run the main job locally: writers -> queue directory -> flusher -> a local server."""
    workdir = tempfile.mkdtemp(prefix="langfuse-dq-demo-")
    queue_dir = queue_dir or os.path.join(workdir, "queue")
    store = os.path.join(workdir, "received.jsonl")
    server = make_server(0, store, quiet=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE_")}
    env.update(
        LANGFUSE_PUBLIC_KEY=DEMO_PUBLIC_KEY,
        LANGFUSE_SECRET_KEY=DEMO_SECRET_KEY,
        LANGFUSE_BASE_URL=url,
        LANGFUSE_DQ_DIR=queue_dir,
        LANGFUSE_FLUSH_INTERVAL="0.2",
        LANGFUSE_DQ_IDLE_EXIT="5",
    )
    click.echo(f"dev server      {url} (in this process)")
    click.echo(f"queue directory {queue_dir}")
    click.echo(f"writers         {writers} processes x {per_writer} fake LLM requests")
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(k), str(per_writer)], env=env)  # noqa: S603
        for k in range(writers)
    ]
    try:
        failed = [p.args for p in procs if p.wait(timeout=timeout) != 0]
        written_at = time.monotonic()
        if failed:
            raise CliError(f"{len(failed)} writer processes failed", EXIT_FAILED)
        expected_events = writers * per_writer * EVENTS_PER_REQUEST
        click.echo(f"events written  {expected_events:,} in {written_at - started:.1f}s")
        lf = Langfuse(
            public_key=DEMO_PUBLIC_KEY,
            secret_key=DEMO_SECRET_KEY,
            host=url,
            queue_dir=queue_dir,
            autospawn=False,
        )
        remaining = max(1.0, timeout - (time.monotonic() - started))
        delivered_all = lf.flush(timeout=remaining)
        done_at = time.monotonic()
        stats = queue_stats(open_queue_dir(queue_dir, create=False))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _stop_flusher(queue_dir)
        server.shutdown()
        server.server_close()
    records = load_store(store)
    span_ids = collections.Counter(r["span"]["spanId"] for r in records if r.get("kind") == "span")
    scores = collections.Counter(r["event"]["id"] for r in records if r.get("kind") == "event")
    duplicates = sum(n - 1 for n in span_ids.values()) + sum(n - 1 for n in scores.values())
    expected_spans = writers * per_writer * SPANS_PER_REQUEST
    expected_scores = writers * per_writer
    elapsed = done_at - started
    rate = stats["delivered"] / max(elapsed, 1e-9)
    click.echo(
        f"delivered       {stats['delivered']:,} events as {len(span_ids):,} spans and "
        f"{len(scores):,} scores in {elapsed:.1f}s ({rate:,.0f} events/s end to end)"
    )
    click.echo(f"duplicates      {duplicates}")
    click.echo(
        f"pending         {stats['pending']}, quarantined {stats['quarantined']}, "
        f"dropped {stats['dropped']}"
    )
    click.echo(f"received spans  {store}")
    ok = (
        delivered_all
        and len(span_ids) == expected_spans
        and len(scores) == expected_scores
        and stats["delivered"] == expected_events
    )
    if not ok:
        raise CliError(
            f"not everything arrived: {len(span_ids)}/{expected_spans} spans, "
            f"{len(scores)}/{expected_scores} scores",
            EXIT_FAILED,
        )
    click.echo("all delivered")


def _stop_flusher(queue_dir: str) -> None:
    """The demo started the flusher (through its writers): stop it, gracefully."""
    try:
        pid, alive = flusher_info(open_queue_dir(queue_dir, create=False))
    except OSError:
        return
    if pid is None or not alive:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
