"""The health endpoint: stats() as JSON, 200 when healthy and 503 when not, served by a real
WSGI server (wsgiref on 127.0.0.1) and by the ASGI app driven through its callable, on real
queue directories."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from helpers import KEYS, Server, stop_flusher, wait_for
from langfuse_dq import Langfuse
from langfuse_dq.integrations.health import check_health, make_asgi_app, make_wsgi_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WsgiServer:
    """A wsgiref server on 127.0.0.1 in a thread of this test."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.httpd: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/healthz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def get(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers), err.read()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[..., Any]], WsgiServer]]:
    servers: list[WsgiServer] = []

    def start(app: Callable[..., Any]) -> WsgiServer:
        servers.append(WsgiServer(app))
        return servers[-1]

    yield start
    for srv in servers:
        srv.stop()


def _writer(queue_dir: str, host: str = "http://127.0.0.1:9", autospawn: bool = False) -> Langfuse:
    """A client; with autospawn its flush() waits for a spawned flusher. (A flush without one
    would deliver from this process, whose pid the heartbeat file would then name, and the
    queue_dir fixture's stop_flusher would stop the test process itself.)"""
    return Langfuse(
        public_key=KEYS["LANGFUSE_PUBLIC_KEY"],
        secret_key=KEYS["LANGFUSE_SECRET_KEY"],
        host=host,
        queue_dir=queue_dir,
        autospawn=autospawn,
        flush_interval=0.2,
    )


def test_wsgi_app_reports_healthy_then_stale_then_healthy_after_delivery(
    queue_dir: str, server: Server, serve: Callable[[Callable[..., Any]], WsgiServer]
) -> None:
    strict = serve(make_wsgi_app(queue_dir=queue_dir, max_age=0.5, cache_seconds=0))
    no_flusher = serve(
        make_wsgi_app(queue_dir=queue_dir, max_age=None, flusher_grace=0.3, cache_seconds=0)
    )
    cron = serve(
        make_wsgi_app(queue_dir=queue_dir, max_age=None, require_flusher=False, cache_seconds=0)
    )

    # Nothing recorded yet: the directory does not even exist.
    status, headers, body = strict.get()
    report = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert report["healthy"] is True and report["problems"] == [] and report["pending"] == 0

    lf = _writer(queue_dir, server.url)
    for i in range(5):
        lf.trace(name=f"t{i}").span(name="s").end()
    status, _, body = strict.get()
    report = json.loads(body)
    assert status == 200, report  # pending, but young
    assert report["pending"] == 15 and report["flusher_alive"] is False
    for key in ("pending_bytes", "oldest_pending_age_s", "in_flight", "quarantined", "dropped"):
        assert key in report, key

    time.sleep(0.7)
    status, _, body = strict.get()
    report = json.loads(body)
    assert status == 503 and report["healthy"] is False
    assert any("oldest pending event" in p and "max_age 0.5s" in p for p in report["problems"])
    status, _, body = no_flusher.get()
    assert status == 503
    assert any("no flusher is alive" in p for p in json.loads(body)["problems"])
    status, _, body = cron.get()
    assert status == 200, body  # delivery by cron: a pending queue without flusher is fine

    # A flusher delivers; healthy again.
    deliverer = _writer(queue_dir, server.url, autospawn=True)
    assert deliverer.flush(timeout=30) is True
    status, _, body = strict.get()
    report = json.loads(body)
    assert status == 200, report
    assert report["pending"] == 0 and report["delivered"] >= 15
    lf.shutdown()
    deliverer.shutdown()


def test_wsgi_head_and_other_methods(
    queue_dir: str, serve: Callable[[Callable[..., Any]], WsgiServer]
) -> None:
    srv = serve(make_wsgi_app(queue_dir=queue_dir, cache_seconds=0))
    status, headers, body = srv.get("HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    status, headers, body = srv.get("POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_an_unusable_queue_directory_is_unhealthy(
    tmp_path: Path, serve: Callable[[Callable[..., Any]], WsgiServer]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    status, _, body = serve(make_wsgi_app(queue_dir=str(not_a_dir), cache_seconds=0)).get()
    report = json.loads(body)
    assert status == 503
    assert report["problems"] == [f"queue directory unusable: {report['last_error']}"]
    assert str(not_a_dir) in report["last_error"]


def test_rejected_keys_and_quarantine_limits_are_problems(queue_dir: str, server: Server) -> None:
    server.faults(keys=["pk-other", "sk-other"])
    lf = _writer(queue_dir, server.url, autospawn=True)
    lf.trace(name="t").span(name="s").end()
    assert lf.flush(timeout=1.5) is False

    def rejected() -> list[str]:
        report = check_health(queue_dir=queue_dir, max_age=None, require_flusher=False)
        return [p for p in report.problems if "rejects the keys" in p and report.status == 503]

    wait_for(rejected, 15, what="the auth error in the health report")
    assert check_health(queue_dir=queue_dir, max_quarantined=0).stats["quarantined"] == 0
    lf.shutdown()
    stop_flusher(queue_dir)


def test_the_client_s_queue_is_used_by_default(queue_dir: str) -> None:
    lf = _writer(queue_dir)
    lf.trace(name="t")
    report = check_health(lf)
    assert report.healthy and report.stats["queue_dir"] == queue_dir
    assert report.stats["pending"] == 1
    assert report.body()["healthy"] is True and "pending" in report.body()
    lf.shutdown()


# --- ASGI ----------------------------------------------------------------------------------


def call_asgi(
    app: Callable[..., Any], scope: dict[str, Any], incoming: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Drive an ASGI app: feed ``incoming`` messages, collect what it sends."""
    sent: list[dict[str, Any]] = []
    queue = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    return sent


def http_scope(method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def test_asgi_app_answers_with_stats_and_the_health_status(queue_dir: str) -> None:
    app = make_asgi_app(queue_dir=queue_dir, max_age=0.3, cache_seconds=0)
    start, body = call_asgi(app, http_scope())
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    report = json.loads(body["body"])
    assert report["healthy"] is True and int(headers[b"content-length"]) == len(body["body"])

    lf = _writer(queue_dir)
    lf.trace(name="t")
    time.sleep(0.5)
    start, body = call_asgi(app, http_scope())
    report = json.loads(body["body"])
    assert start["status"] == 503 and report["pending"] == 1
    assert report["oldest_pending_age_s"] > 0.3
    assert any("oldest pending event" in p for p in report["problems"])

    start, body = call_asgi(app, http_scope("HEAD"))
    assert start["status"] == 503 and body["body"] == b""
    start, body = call_asgi(app, http_scope("POST"))
    assert start["status"] == 405 and dict(start["headers"])[b"allow"] == b"GET, HEAD"
    lf.shutdown()


def test_asgi_app_speaks_the_lifespan_protocol(queue_dir: str) -> None:
    app = make_asgi_app(queue_dir=queue_dir)
    sent = call_asgi(
        app,
        {"type": "lifespan", "asgi": {"version": "3.0"}},
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_invalid_options_raise_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="max_age"):
        make_wsgi_app(max_age=-1)
    with pytest.raises(ValueError, match="flusher_grace"):
        make_asgi_app(flusher_grace=-0.5)
    with pytest.raises(ValueError, match="cache_seconds"):
        make_wsgi_app(cache_seconds=-1)
    with pytest.raises(ValueError, match="max_quarantined"):
        check_health(queue_dir="/nonexistent", max_quarantined=-1)


def test_cache_seconds_spares_the_disk(queue_dir: str) -> None:
    app = make_wsgi_app(queue_dir=queue_dir, cache_seconds=60)
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append(status)

    first = json.loads(b"".join(app({"REQUEST_METHOD": "GET"}, start_response)))
    lf = _writer(queue_dir)
    lf.trace(name="t")
    second = json.loads(b"".join(app({"REQUEST_METHOD": "GET"}, start_response)))
    assert first == second and first["pending"] == 0, "served from the cache"
    assert seen == ["200 OK", "200 OK"]
    wait_for(lambda: check_health(queue_dir=queue_dir).stats["pending"] == 1, 5)
    lf.shutdown()
