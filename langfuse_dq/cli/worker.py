"""``langfuse-dq worker`` (the flusher in the foreground) and ``langfuse-dq check``."""

from __future__ import annotations

import json
import logging
import signal
import time
from types import FrameType
from typing import Optional

import click

from ..flusher import Flusher, tune_gc
from ..transport.http import HttpSender, TransportError
from ..transport.otlp import OTLP_PATH
from .common import EXIT_CONFIG, CliError, common_options, load_config, open_dir

log = logging.getLogger("langfuse_dq")


@click.command()
@common_options
def worker(queue_dir: Optional[str], debug: bool) -> None:
    """Run the flusher in the foreground until SIGTERM or SIGINT (systemd, supervisord, a sidecar).

    Waits its turn if another flusher holds the directory. Stopping it never loses anything:
    what was not delivered stays queued.
    """
    config = load_config(queue_dir, need_keys=True)
    qd = open_dir(config, create=True)
    tune_gc()
    logging.getLogger("langfuse_dq").setLevel(logging.DEBUG if debug else logging.INFO)
    flusher = Flusher(config, qd)
    stopping = {"flag": False}

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stopping["flag"] = True
        flusher.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    waited = False
    while not flusher.acquire(timeout=1.0):
        if stopping["flag"]:
            return
        if not waited:
            log.info("another flusher holds %s; waiting for it to exit", qd.lock_path)
            waited = True
    log.info("worker started (dir %s, transport %s)", qd.root, config.transport)
    try:
        result = flusher.run(exit_when_idle=False)
    finally:
        flusher.release()
    log.info(
        "worker stopped: delivered %d, quarantined %d, dropped %d",
        result.delivered,
        result.quarantined,
        result.dropped,
    )


@click.command()
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@common_options
def check(queue_dir: Optional[str], debug: bool, timeout: float) -> None:
    """Verify the host and keys against the server (GET /api/public/projects, OTLP endpoint)."""
    config = load_config(queue_dir, need_keys=True)
    sender = HttpSender(config)
    host = config.host
    started = time.monotonic()
    try:
        response = sender.request("GET", "/api/public/projects", timeout=timeout)
    except TransportError as exc:
        raise CliError(f"cannot reach {host}: {_network_hint(str(exc))}", EXIT_CONFIG) from None
    if response.status in (401, 403):
        what = "the keys were refused" if response.status == 401 else "access is forbidden"
        raise CliError(
            f"{host}: {what} (HTTP {response.status}); check LANGFUSE_PUBLIC_KEY, "
            "LANGFUSE_SECRET_KEY and that they belong to this host's region",
            EXIT_CONFIG,
        )
    if response.status == 404:
        raise CliError(f"{host} has no Langfuse API (HTTP 404): is the host right?", EXIT_CONFIG)
    if response.status != 200:
        raise CliError(
            f"{host} answered HTTP {response.status}: {response.text[:200]}", EXIT_CONFIG
        )
    project = _project_name(response.text)
    try:
        otlp = sender.post(OTLP_PATH, b'{"resourceSpans":[]}', "application/json")
    except TransportError as exc:
        raise CliError(f"cannot reach the OTLP endpoint of {host}: {exc}", EXIT_CONFIG) from None
    if otlp.status == 404:
        raise CliError(
            f"{host} has no OTLP endpoint ({OTLP_PATH}): the server is older than v3.22; "
            "upgrade it or set LANGFUSE_DQ_TRANSPORT=ingestion",
            EXIT_CONFIG,
        )
    if otlp.status >= 300:
        raise CliError(f"OTLP endpoint answered HTTP {otlp.status}: {otlp.text[:200]}", EXIT_CONFIG)
    elapsed = (time.monotonic() - started) * 1000
    click.echo(f"ok: {host} accepts these keys (project {project}), OTLP ready, {elapsed:.0f} ms")


def _project_name(text: str) -> str:
    try:
        data = json.loads(text).get("data") or []
        first = data[0]
        return f"{first.get('name')} ({first.get('id')})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return "unknown"


def _network_hint(message: str) -> str:
    if "Name or service not known" in message or "Temporary failure in name resolution" in message:
        return f"DNS lookup failed ({message.split(':', maxsplit=1)[0]}); is the host name right?"
    if "TLS" in message or "SSL" in message or "certificate" in message:
        return f"TLS handshake failed: {message}; set LANGFUSE_DQ_CA_BUNDLE for a private CA"
    if "Connection refused" in message:
        return "connection refused: nothing listens there"
    if "timeout" in message.lower():
        return f"timed out: {message}"
    return message
