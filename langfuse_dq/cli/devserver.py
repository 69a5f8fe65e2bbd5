"""``langfuse-dq dev-server``: a local Langfuse-compatible receiver (see devserver.py)."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional

import click

from ..devserver import make_server, tune_gc


@click.command("dev-server")
@click.option("--port", type=click.IntRange(0, 65535), default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--store",
    type=click.Path(dir_okay=False),
    default="dq-store.jsonl",
    show_default=True,
    help="Where received spans and events are appended, one JSON object per line.",
)
@click.option(
    "--faults", is_flag=True, help="Enable POST /_dq/faults (fault injection, for tests)."
)
@click.option("--quiet", is_flag=True, help="No line per request.")
@click.option("--dir", "queue_dir", default=None, hidden=True)
@click.option("--debug", is_flag=True, hidden=True)
def dev_server(
    port: int,
    host: str,
    store: str,
    faults: bool,
    quiet: bool,
    queue_dir: Optional[str],
    debug: bool,
) -> None:
    """Run a local receiver that takes what Langfuse takes and stores it as JSON lines.

    Point an app at it with LANGFUSE_BASE_URL=http://127.0.0.1:3000 (any keys work).
    """
    tune_gc()
    server = make_server(port, store, host, faults=faults, quiet=quiet)
    bound = server.server_address[1]
    click.echo(f"langfuse-dq dev-server listening on http://{host}:{bound} (store: {store})")
    sys.stdout.flush()

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        counts = server.counts
        click.echo(
            f"stopped: {counts['requests']} requests, {counts['spans']} spans, "
            f"{counts['events']} events, {counts['scores']} scores"
        )
