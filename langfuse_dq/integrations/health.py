"""A health endpoint for the queue: ``stats()`` as JSON, HTTP 200 when healthy, 503 when not.

No framework is needed: :func:`make_wsgi_app` returns a WSGI app (Flask, Django, gunicorn,
any WSGI server), :func:`make_asgi_app` an ASGI app (FastAPI, Starlette, Django ASGI,
uvicorn), and :func:`check_health` the same verdict as a plain object for a view of your own::

    from langfuse_dq.integrations.health import make_wsgi_app
    health = make_wsgi_app(max_age=300)          # mount at /healthz/langfuse

The body is the ``stats()`` object (``pending``, ``pending_bytes``, ``oldest_pending_age_s``,
``in_flight``, ``quarantined``, ``dropped``, ``flusher_pid``, ``flusher_alive``,
``last_success_at``, ``last_error``, ...) plus ``healthy`` (bool) and ``problems`` (a list of
sentences, empty when healthy).

The rule: the queue is **unhealthy** (503) when any of these holds, else healthy (200):

1. the queue directory exists but cannot be used (permissions, read-only, not a directory);
2. the oldest pending event is older than ``max_age`` seconds (default 300; None: no limit):
   delivery is not keeping up, Langfuse is unreachable, or nothing is delivering;
3. events are pending, no flusher is alive, and the oldest has waited more than
   ``flusher_grace`` seconds (default 30; the client starts a flusher within seconds of an
   event, so this means it cannot). Pass ``require_flusher=False`` when delivery is by cron
   (``langfuse-dq flush``), where no flusher runs between jobs;
4. the server rejects the keys (``auth_error``): nothing can be delivered until they are fixed;
5. more than ``max_quarantined`` events are in quarantine (default None: not checked).

A queue directory that does not exist yet (nothing was ever recorded) is healthy. The figures
are read from disk (journal tails, state, quarantine); the result is cached for
``cache_seconds`` (default 1) so that a busy prober costs little.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..queuedir import QueueDirError, open_queue_dir
from ..stats import empty_stats, queue_stats

if TYPE_CHECKING:
    from ..client import Langfuse

__all__ = ["HealthReport", "check_health", "make_asgi_app", "make_wsgi_app"]

DEFAULT_MAX_AGE = 300.0
DEFAULT_FLUSHER_GRACE = 30.0


@dataclass
class HealthReport:
    """The verdict: ``healthy``, the HTTP ``status`` to answer, ``problems``, the ``stats``."""

    healthy: bool
    problems: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        """200 when healthy, else 503."""
        return 200 if self.healthy else 503

    def body(self) -> dict[str, Any]:
        """The JSON object served: the stats plus ``healthy`` and ``problems``."""
        return {"healthy": self.healthy, "problems": list(self.problems), **self.stats}

    def json_bytes(self) -> bytes:
        """The body as UTF-8 JSON."""
        return json.dumps(self.body(), sort_keys=True, default=str).encode("utf-8")


def _read_stats(client: Optional[Langfuse], queue_dir: Optional[str]) -> tuple[dict[str, Any], str]:
    """(stats, problem or ''), never raising for a disk problem."""
    if queue_dir is None:
        if client is None:
            from ..client import get_client  # noqa: PLC0415 (only when no client was given)

            client = get_client()
        queue_dir = client.config.queue_dir
    if not os.path.exists(queue_dir):
        return empty_stats(queue_dir), ""
    try:
        qd = open_queue_dir(queue_dir, create=False)
    except QueueDirError as exc:
        text = exc.strerror or str(exc)
        return empty_stats(queue_dir, error=text), f"queue directory unusable: {text}"
    try:
        return queue_stats(qd), ""
    except OSError as exc:
        text = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
        return empty_stats(queue_dir, error=text), f"cannot read the queue: {text}"


def _validate(
    max_age: Optional[float], flusher_grace: float, max_quarantined: Optional[int]
) -> None:
    if max_age is not None and not (isinstance(max_age, (int, float)) and max_age >= 0):
        raise ValueError(f"max_age must be a number >= 0 or None, got {max_age!r}")
    if not (isinstance(flusher_grace, (int, float)) and flusher_grace >= 0):
        raise ValueError(f"flusher_grace must be a number >= 0, got {flusher_grace!r}")
    if max_quarantined is not None and not (
        isinstance(max_quarantined, int) and max_quarantined >= 0
    ):
        raise ValueError(f"max_quarantined must be an int >= 0 or None, got {max_quarantined!r}")


def check_health(
    client: Optional[Langfuse] = None,
    *,
    queue_dir: Optional[str] = None,
    max_age: Optional[float] = DEFAULT_MAX_AGE,
    require_flusher: bool = True,
    flusher_grace: float = DEFAULT_FLUSHER_GRACE,
    max_quarantined: Optional[int] = None,
) -> HealthReport:
    """Apply the health rule (module docstring) to the queue of ``client`` or ``queue_dir``.

    With neither, the queue of ``get_client()`` (the ``LANGFUSE_DQ_DIR`` of the environment).
    """
    _validate(max_age, flusher_grace, max_quarantined)
    stats, problem = _read_stats(client, queue_dir)
    problems = [problem] if problem else []
    age = stats.get("oldest_pending_age_s")
    pending = int(stats.get("pending") or 0)
    if max_age is not None and isinstance(age, (int, float)) and age > max_age:
        problems.append(
            f"the oldest pending event is {age:.1f}s old (max_age {max_age:g}s): "
            "delivery is not keeping up or not running"
        )
    if (
        require_flusher
        and pending > 0
        and not stats.get("flusher_alive")
        and isinstance(age, (int, float))
        and age > flusher_grace
    ):
        problems.append(
            f"{pending} events are pending and no flusher is alive "
            f"(oldest {age:.1f}s, grace {flusher_grace:g}s)"
        )
    if stats.get("auth_error"):
        problems.append(f"the server rejects the keys: {stats['auth_error']}")
    quarantined = int(stats.get("quarantined") or 0)
    if max_quarantined is not None and quarantined > max_quarantined:
        problems.append(f"{quarantined} events in quarantine (max_quarantined {max_quarantined})")
    return HealthReport(healthy=not problems, problems=problems, stats=stats)


class _Checker:
    """check_health with fixed options and a short cache, shared by the WSGI and ASGI apps."""

    def __init__(self, cache_seconds: float, **options: Any) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, got {cache_seconds!r}")
        _validate(options["max_age"], options["flusher_grace"], options["max_quarantined"])
        self.options = options
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._report: Optional[HealthReport] = None
        self._at = 0.0

    def report(self) -> HealthReport:
        now = time.monotonic()
        with self._lock:
            if self._report is not None and now - self._at < self.cache_seconds:
                return self._report
        report = check_health(**self.options)
        with self._lock:
            self._report, self._at = report, time.monotonic()
        return report


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]


_WSGI_STATUS = {200: "200 OK", 503: "503 Service Unavailable"}
_NOT_ALLOWED = b'{"error": "method not allowed"}'


def make_wsgi_app(
    client: Optional[Langfuse] = None,
    *,
    queue_dir: Optional[str] = None,
    max_age: Optional[float] = DEFAULT_MAX_AGE,
    require_flusher: bool = True,
    flusher_grace: float = DEFAULT_FLUSHER_GRACE,
    max_quarantined: Optional[int] = None,
    cache_seconds: float = 1.0,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app answering GET/HEAD on any path with the health report (200 or 503)."""
    checker = _Checker(
        cache_seconds,
        client=client,
        queue_dir=queue_dir,
        max_age=max_age,
        require_flusher=require_flusher,
        flusher_grace=flusher_grace,
        max_quarantined=max_quarantined,
    )

    def health_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed", [*_headers(_NOT_ALLOWED), ("Allow", "GET, HEAD")]
            )
            return [_NOT_ALLOWED]
        report = checker.report()
        body = report.json_bytes()
        start_response(_WSGI_STATUS[report.status], _headers(body))
        return [] if method == "HEAD" else [body]

    return health_app


ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


def make_asgi_app(
    client: Optional[Langfuse] = None,
    *,
    queue_dir: Optional[str] = None,
    max_age: Optional[float] = DEFAULT_MAX_AGE,
    require_flusher: bool = True,
    flusher_grace: float = DEFAULT_FLUSHER_GRACE,
    max_quarantined: Optional[int] = None,
    cache_seconds: float = 1.0,
) -> Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]:
    """An ASGI 3 app answering GET/HEAD with the health report (200 or 503).

    The disk reads run in the event loop's default executor, never in the loop itself. It
    also answers the ``lifespan`` protocol, so it can be served on its own (uvicorn).
    """
    checker = _Checker(
        cache_seconds,
        client=client,
        queue_dir=queue_dir,
        max_age=max_age,
        require_flusher=require_flusher,
        flusher_grace=flusher_grace,
        max_quarantined=max_quarantined,
    )

    async def health_app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message.get("type") == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message.get("type") == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            status, body = 405, _NOT_ALLOWED
            headers = [*_headers(body), ("Allow", "GET, HEAD")]
        else:
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(None, checker.report)
            status, body = report.status, report.json_bytes()
            headers = _headers(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return health_app
