"""Optional gunicorn server hooks. langfuse-dq needs none of them to work under gunicorn.

Without any configuration, gunicorn (with or without ``--preload``, with worker recycling by
``--max-requests``) is safe: a client created in the master before the fork writes from each
worker to a journal segment of the worker's own, every event is on disk when the call
returns, a recycled worker loses nothing, and the first event of a worker starts a detached
flusher if none is alive. The hooks only shorten delays::

    # gunicorn.conf.py
    from langfuse_dq.integrations.gunicorn import on_exit, when_ready, worker_exit

- ``when_ready`` (master, once listening): start the flusher now rather than at the first
  event, so delivery of events left from a previous run starts at boot;
- ``worker_exit`` (each worker, as it exits): close the worker's segment and make sure a
  flusher is alive to deliver what it wrote (a file check; when a flusher must be started,
  the few tens of milliseconds that takes);
- ``on_exit`` (master, at shutdown): make sure a flusher is alive to deliver what the workers
  wrote; it exits on its own once the queue is drained.

When you have hooks of your own, call ours from them (``when_ready(server)``...). The hooks
act on every client the process created (the module-level client of a ``--preload``\\ ed app)
and, when there is none, on ``get_client()`` (built from the environment). They never raise:
a problem is logged by gunicorn's logger and the server carries on.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import client as _client_module

__all__ = ["on_exit", "when_ready", "worker_exit"]

log = logging.getLogger("langfuse_dq")


def _clients() -> list[_client_module.Langfuse]:
    found = [c for c in list(_client_module._clients) if c.enabled]
    if not found:
        default = _client_module.get_client()
        if default.enabled:
            found.append(default)
    return found


def _ensure_flusher(server: Any, where: str) -> None:
    try:
        for client in _clients():
            supervisor = client._supervisor
            if supervisor is not None:
                supervisor.check(background=False)
    except Exception as exc:  # noqa: BLE001 (a hook must never take the server down)
        _log(server, "langfuse-dq: %s hook: %s", where, exc)


def _log(server: Any, message: str, *args: Any) -> None:
    logger = getattr(server, "log", None)
    if logger is not None and hasattr(logger, "warning"):
        logger.warning(message, *args)
    else:
        log.warning(message, *args)


def when_ready(server: Any) -> None:
    """gunicorn ``when_ready``: start a flusher from the master if none is alive."""
    _ensure_flusher(server, "when_ready")


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit``: close this worker's segment; make sure a flusher will run."""
    try:
        for client in list(_client_module._clients):
            client.shutdown(timeout=0.5)
    except Exception as exc:  # noqa: BLE001 (a hook must never take the server down)
        _log(server, "langfuse-dq: worker_exit hook: %s", exc)


def on_exit(server: Any) -> None:
    """gunicorn ``on_exit``: make sure a flusher delivers what the workers left queued."""
    _ensure_flusher(server, "on_exit")
