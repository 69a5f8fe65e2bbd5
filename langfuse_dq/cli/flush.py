"""``langfuse-dq flush``: drain the queue now, in the foreground (the cron job).

Cooperates with a running flusher: when one holds the lock, ``flush`` waits for it to
deliver everything written before the command started, taking over if it dies. Exit status:
0 all delivered, 1 something went to quarantine (or was dropped), 2 not drained by the
timeout, 3 configuration or authentication error.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import click

from ..delivery import flush_queue
from ..flusher import tune_gc
from ..queue import EventQueue
from ..stats import queue_stats
from .common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    CliError,
    common_options,
    is_terminal,
    load_config,
    open_dir,
)


@click.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0),
    default=300.0,
    show_default=True,
    help="Give up (exit 2) after this many seconds; what is left stays queued.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on success.")
@common_options
def flush(queue_dir: Optional[str], debug: bool, timeout: float, quiet: bool) -> None:
    """Deliver everything queued so far, then exit (for cron and deploy scripts)."""
    config = load_config(queue_dir, need_keys=True)
    qd = open_dir(config, create=True)
    tune_gc()
    queue = EventQueue(config.queue_dir, config.max_queue_bytes, config.full_policy)
    if not queue.usable:
        raise CliError(f"cannot write to {config.queue_dir}: {queue.degraded_reason}", EXIT_CONFIG)
    interactive = is_terminal() and not quiet
    started = time.time()
    before = queue_stats(qd)["pending"] if interactive else 0
    stop = threading.Event()
    progress: Optional[threading.Thread] = None
    if interactive and before:
        progress = threading.Thread(target=_show_progress, args=(qd, before, stop), daemon=True)
        progress.start()
    try:
        outcome = flush_queue(config, queue, timeout, fail_on_auth=True)
    finally:
        stop.set()
        if progress is not None:
            progress.join(timeout=2)
        queue.close()
    if outcome.auth_error:
        raise CliError(outcome.auth_error, EXIT_CONFIG)
    if not outcome.done:
        left = queue_stats(qd)
        # Another flusher did the work: did it meet an authentication error meanwhile?
        if (
            not outcome.ran_here
            and left.get("auth_error")
            and _recent(left.get("auth_error_at"), started)
        ):
            raise CliError(str(left["auth_error"]), EXIT_CONFIG)
        raise CliError(
            f"not drained within {timeout:g}s: {left['pending']} events still queued "
            f"(last error: {left['last_error'] or 'none'})",
            EXIT_TIMEOUT,
        )
    if outcome.quarantined or outcome.dropped:
        parts = []
        if outcome.quarantined:
            parts.append(
                f"{outcome.quarantined} events went to quarantine (langfuse-dq quarantine list)"
            )
        if outcome.dropped:
            parts.append(f"{outcome.dropped} events were dropped (langfuse-dq status)")
        raise CliError("; ".join(parts), EXIT_FAILED)
    if interactive:
        click.echo(f"all delivered in {time.time() - started:.1f}s")


def _recent(iso: object, since: float) -> bool:
    from ..timeutil import ns_from_iso  # noqa: PLC0415 (only on this error path)

    if not isinstance(iso, str):
        return True
    try:
        return ns_from_iso(iso) / 1e9 >= since
    except ValueError:
        return True


def _show_progress(qd: object, total: int, stop: threading.Event) -> None:
    with click.progressbar(length=total, label="delivering", show_pos=True, file=None) as bar:
        done = 0
        while not stop.wait(0.5):
            try:
                pending = queue_stats(qd)["pending"]  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001, S112 (a display problem must not stop the flush)
                continue
            now_done = max(0, min(total, total - pending))
            if now_done > done:
                bar.update(now_done - done)
                done = now_done
        bar.update(total - done)
