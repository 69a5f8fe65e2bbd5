"""A local Langfuse-compatible receiver for development, demos and tests.

It takes what Langfuse takes (OTLP/HTTP traces as protobuf or JSON, gzip or not, on
``/api/public/otel/v1/traces``; ingestion batches on ``/api/public/ingestion``; scores on
``/api/public/scores``; ``GET /api/public/projects`` for ``check``) and stores everything it
accepts as JSON lines, one span or event per line. It needs no account and binds to
127.0.0.1 by default.

Started with ``faults=True`` it also obeys a control endpoint, ``POST /_dq/faults``, that makes
it misbehave the ways real servers do: answer N requests (or every request for S seconds) with
a status such as 503 or 429 with ``Retry-After``, fail a fraction at random, answer slowly,
drop connections, reject spans or events whose name contains a marker (400 for an OTLP
request, per-event 400 inside a 207), behave like a v4 ``events_only`` server, or require keys.
"""

from __future__ import annotations

import argparse
import base64
import gc
import gzip
import json
import json.decoder
import json.scanner
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .fastjson import fast_encode
from .otlp_proto import DecodeError, decode_export_request
from .timeutil import iso_from_ns

#: ``json.dumps(value, separators=(",", ":"))``, built faster (see fastjson.py)
_DUMPS = fast_encode(json.JSONEncoder(separators=(",", ":")))
#: what json.loads parses with (typeshed types these two oddly)
_SCAN: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_SCANSTRING: Any = json.decoder.scanstring  # type: ignore[attr-defined]
_WHITESPACE = " \t\n\r"
_SPANS_PATH = ("resourceSpans", "scopeSpans", "spans")


class _OtherShape(Exception):
    """An OTLP/JSON body the fast path does not take; the general path decides about it."""


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _object(text: str, pos: int, path: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """The object at ``pos`` as ``json.loads`` parses it, except that the array under the key
    ``path[0]`` is parsed by :func:`_array` (down ``path``)."""
    if not text.startswith("{", pos):
        raise _OtherShape
    out: dict[str, Any] = {}
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        return out, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise _OtherShape
        key, pos = _SCANSTRING(text, pos + 1)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise _OtherShape
        pos = _skip(text, pos + 1)
        if key == path[0]:
            out[key], pos = _array(text, pos, path[1:])
        else:
            out[key], pos = _SCAN(text, pos)
        pos = _skip(text, pos)
        if text.startswith("}", pos):
            return out, pos + 1
        if not text.startswith(",", pos):
            raise _OtherShape
        pos = _skip(text, pos + 1)


def _array(text: str, pos: int, path: tuple[str, ...]) -> tuple[list[Any], int]:
    """An array of objects parsed down ``path``; at its end (``spans``), each element becomes
    ``(span, its JSON text as sent)``."""
    if not text.startswith("[", pos):
        raise _OtherShape
    out: list[Any] = []
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return out, pos + 1
    while True:
        if path:
            item, pos = _object(text, pos, path)
            out.append(item)
        else:
            span, end = _SCAN(text, pos)
            if not isinstance(span, dict):
                raise _OtherShape
            out.append((span, text[pos:end]))
            pos = end
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return out, pos + 1
        if not text.startswith(",", pos):
            raise _OtherShape
        pos = _skip(text, pos + 1)


def _otlp_json_fast(body: bytes) -> Optional[dict[str, Any]]:
    """An ASCII OTLP/JSON body parsed as ``json.loads`` would, with each span kept as
    ``(span, text)`` so that its text is stored as it came instead of encoded again (the
    flusher sends compact ASCII JSON, exactly what encoding it again would give). None when
    the body is not plainly of that shape: the general path then takes it."""
    if not body.isascii():
        return None
    text = body.decode("ascii")
    try:
        payload, end = _object(text, _skip(text, 0), _SPANS_PATH)
    except (_OtherShape, ValueError, StopIteration, RecursionError):
        return None
    if _skip(text, end) != len(text):
        return None
    for resource_spans in payload.get("resourceSpans") or []:
        if not isinstance(resource_spans.get("resource") or {}, dict):
            return None
        for scope_spans in resource_spans.get("scopeSpans") or []:
            if not isinstance(scope_spans.get("scope") or {}, dict):
                return None
    return payload


OTLP_PATH = "/api/public/otel/v1/traces"
INGESTION_PATH = "/api/public/ingestion"
SCORES_PATH = "/api/public/scores"
PROJECTS_PATH = "/api/public/projects"
ACCEPTED_TYPES_V4 = ("score-create", "sdk-log")


class Faults:
    """Misbehaviour the control endpoint switches on (all off by default)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.status_count = 0
        self.status = 503
        self.retry_after: Optional[str] = None
        self.fail_until = 0.0
        self.fail_rate = 0.0
        self.delay = 0.0
        self.drop_count = 0
        self.drop_rate = 0.0
        self.reject_names: list[str] = []
        self.events_only = False
        self.keys: Optional[tuple[str, str]] = None

    def update(self, spec: dict[str, Any]) -> None:
        if spec.get("reset"):
            self.reset()
        if "status" in spec:
            self.status = int(spec["status"])
        if "count" in spec:
            self.status_count = int(spec["count"])
        if "retry_after" in spec:
            self.retry_after = None if spec["retry_after"] is None else str(spec["retry_after"])
        if "fail_for" in spec:
            self.fail_until = time.monotonic() + float(spec["fail_for"])
        if "fail_rate" in spec:
            self.fail_rate = float(spec["fail_rate"])
        if "delay" in spec:
            self.delay = float(spec["delay"])
        if "drop" in spec:
            self.drop_count = int(spec["drop"])
        if "drop_rate" in spec:
            self.drop_rate = float(spec["drop_rate"])
        if "reject_names" in spec:
            self.reject_names = [str(n) for n in spec["reject_names"] or []]
        if "events_only" in spec:
            self.events_only = bool(spec["events_only"])
        if "keys" in spec:
            keys = spec["keys"]
            self.keys = (str(keys[0]), str(keys[1])) if keys else None


class DevServer(ThreadingHTTPServer):
    """The receiver: a threading HTTP server with a JSON-lines store and counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Optional[str],
        faults_enabled: bool = False,
        quiet: bool = False,
        keys: Optional[tuple[str, str]] = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.store_path = store
        self.faults_enabled = faults_enabled
        self.faults = Faults()
        self.faults.keys = keys
        self.quiet = quiet
        self.lock = threading.Lock()
        self.counts = {
            "requests": 0,
            "spans": 0,
            "events": 0,
            "scores": 0,
            "rejected": 0,
            "failed": 0,
        }
        self._store = open(store, "a", encoding="utf-8") if store else None  # noqa: SIM115

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (a killed flusher) is not an error worth a trace."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def record(self, lines: list[dict[str, Any]]) -> None:
        if self._store is None or not lines:
            return
        text = "".join(_DUMPS(line) + "\n" for line in lines)
        with self.lock:
            self._store.write(text)
            self._store.flush()

    def record_text(self, texts: list[str]) -> None:
        """Store already-encoded lines (each ending in a newline)."""
        if self._store is None or not texts:
            return
        with self.lock:
            self._store.write("".join(texts))
            self._store.flush()

    def count(self, **deltas: int) -> None:
        with self.lock:
            for key, value in deltas.items():
                self.counts[key] = self.counts.get(key, 0) + value

    def server_close(self) -> None:
        super().server_close()
        if self._store is not None:
            self._store.close()


class _Handler(BaseHTTPRequestHandler):
    server: DevServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK add 40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- helpers ---------------------------------------------------------------------------

    def _reply(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if "gzip" in (self.headers.get("Content-Encoding") or ""):
            data = gzip.decompress(data)
        return data

    def _say(self, text: str) -> None:
        if not self.server.quiet:
            sys.stdout.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            sys.stdout.flush()

    def _authorized(self) -> bool:
        keys = self.server.faults.keys
        if keys is None:
            return True
        expected = "Basic " + base64.b64encode(f"{keys[0]}:{keys[1]}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def _injected_failure(self) -> bool:
        """Apply the configured faults; True when the request was answered (or dropped)."""
        f = self.server.faults
        if f.delay:
            time.sleep(f.delay)
        drop = False
        with self.server.lock:
            if f.drop_count > 0:
                f.drop_count -= 1
                drop = True
        if drop or (f.drop_rate and random.random() < f.drop_rate):
            self.server.count(failed=1)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        status = None
        with self.server.lock:
            if f.status_count > 0:
                f.status_count -= 1
                status = f.status
        if status is None and time.monotonic() < f.fail_until:
            status = f.status
        if status is None and f.fail_rate and random.random() < f.fail_rate:
            status = 500
        if status is not None:
            self.server.count(failed=1)
            headers = {"Retry-After": f.retry_after} if f.retry_after is not None else None
            self._reply(status, {"message": f"injected failure {status}"}, headers)
            self._say(f"{self.command} {self.path} -> {status} (injected)")
            return True
        return False

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path == "/_dq/stats":
            with self.server.lock:
                counts = dict(self.server.counts)
            self._reply(200, counts)
            return
        if self.path.startswith(PROJECTS_PATH):
            if not self._authorized():
                self._reply(401, {"message": "Invalid credentials"})
                return
            self._reply(200, {"data": [{"id": "dev-project", "name": "langfuse-dq dev server"}]})
            return
        if self.path in ("/", "/api/public/health"):
            self._reply(200, {"status": "OK", "server": "langfuse-dq dev-server"})
            return
        self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        try:
            if self.path == "/_dq/faults" and self.server.faults_enabled:
                spec = json.loads(self._body() or b"{}")
                self.server.faults.update(spec)
                self._reply(200, {"ok": True})
                return
            if self.path not in (OTLP_PATH, INGESTION_PATH, SCORES_PATH):
                self._body()
                self._reply(404, {"message": "not found"})
                return
            self.server.count(requests=1)
            body = self._body()
            if not self._authorized():
                self.server.count(failed=1)
                message = "Invalid credentials. Confirm that you've configured the correct host."
                self._reply(
                    401,
                    {"message": message},
                )
                return
            if self.server.faults_enabled and self._injected_failure():
                return
            if self.path == OTLP_PATH:
                self._otlp(body)
            elif self.path == INGESTION_PATH:
                self._ingestion(body)
            else:
                self._scores(body)
        except (ValueError, DecodeError, OSError) as exc:
            try:
                self._reply(400, {"message": f"bad request: {exc}"})
            except OSError:
                pass

    def _otlp(self, body: bytes) -> None:
        ctype = (self.headers.get("Content-Type") or "").lower()
        fast: Optional[dict[str, Any]] = None
        if "protobuf" in ctype:
            payload = decode_export_request(body)
        elif "json" in ctype:
            fast = _otlp_json_fast(body)
            payload = fast if fast is not None else json.loads(body)
        else:
            self._reply(400, {"error": "Invalid content type"})
            return
        now = iso_from_ns(time.time_ns())
        texts: list[str] = []
        rejects = self.server.faults.reject_names
        dumps = _DUMPS
        for resource_spans in payload.get("resourceSpans") or []:
            resource = dumps(resource_spans.get("resource") or {})
            for scope_spans in resource_spans.get("scopeSpans") or []:
                # Each stored line repeats the resource and scope: encode them once here.
                prefix = f'{{"kind":"span","received_at":"{now}","resource":{resource},"scope":'
                prefix += dumps(scope_spans.get("scope") or {}) + ',"span":'
                for item in scope_spans.get("spans") or []:
                    if fast is not None:
                        span, text = item
                        if "\n" in text or "\r" in text:  # a line break between tokens
                            text = dumps(span)
                    else:
                        span = item
                        text = ""
                    if rejects and any(r in str(span.get("name", "")) for r in rejects):
                        self.server.count(rejected=1)
                        self._reply(
                            400, {"error": f"span {span.get('name')!r} rejected (test marker)"}
                        )
                        self._say(f"POST {OTLP_PATH} -> 400 (rejected span {span.get('name')!r})")
                        return
                    texts.append(prefix + (text or dumps(span)) + "}\n")
        self.server.record_text(texts)
        self.server.count(spans=len(texts))
        self._reply(200, {})
        encoding = "gzip " if "gzip" in (self.headers.get("Content-Encoding") or "") else ""
        kind = "protobuf" if "protobuf" in ctype else "json"
        self._say(f"POST {OTLP_PATH} {kind} {encoding}{len(texts)} spans -> 200")

    def _ingestion(self, body: bytes) -> None:
        payload = json.loads(body)
        batch = payload.get("batch") if isinstance(payload, dict) else None
        if not isinstance(batch, list):
            self._reply(400, {"message": "Invalid request data: batch is required"})
            return
        now = iso_from_ns(time.time_ns())
        successes: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        f = self.server.faults
        for event in batch:
            event_id = event.get("id") if isinstance(event, dict) else None
            etype = event.get("type") if isinstance(event, dict) else None
            body_obj = event.get("body") if isinstance(event, dict) else None
            name = str((body_obj or {}).get("name", "")) if isinstance(body_obj, dict) else ""
            if not event_id or not etype or not isinstance(body_obj, dict):
                errors.append({"id": event_id, "status": 400, "message": "Invalid request data"})
            elif f.events_only and etype not in ACCEPTED_TYPES_V4:
                errors.append({"id": event_id, "status": 400, "message": "Event type not accepted"})
            elif f.reject_names and any(r in name for r in f.reject_names):
                errors.append(
                    {
                        "id": event_id,
                        "status": 400,
                        "message": f"Invalid event {name!r} (test marker)",
                    }
                )
            else:
                successes.append({"id": event_id, "status": 201})
                lines.append({"kind": "event", "received_at": now, "event": event})
        self.server.record(lines)
        scores = sum(1 for line in lines if line["event"].get("type") == "score-create")
        self.server.count(events=len(lines) - scores, scores=scores, rejected=len(errors))
        self._reply(207, {"successes": successes, "errors": errors})
        summary = f"{len(successes)} ok, {len(errors)} errors"
        self._say(f"POST {INGESTION_PATH} {len(batch)} events -> 207 ({summary})")

    def _scores(self, body: bytes) -> None:
        payload = json.loads(body)
        items = payload if isinstance(payload, list) else [payload]
        now = iso_from_ns(time.time_ns())
        self.server.record([{"kind": "score", "received_at": now, "score": item} for item in items])
        self.server.count(scores=len(items))
        self._reply(202, {"message": "Accepted"})
        self._say(f"POST {SCORES_PATH} {len(items)} scores -> 202")


# --- reading a store (tests, demo) ----------------------------------------------------------


def load_store(path: str) -> list[dict[str, Any]]:
    """Every line of a store file."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                text = raw.strip()
                if text:
                    out.append(json.loads(text))
    except FileNotFoundError:
        return []
    return out


def attribute_values(attributes: list[dict[str, Any]]) -> dict[str, Any]:
    """``[{"key": k, "value": {...}}]`` -> ``{k: python value}``."""
    out: dict[str, Any] = {}
    for item in attributes or []:
        out[item.get("key", "")] = _plain(item.get("value") or {})
    return out


def _plain(value: dict[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return value["doubleValue"]
    if "arrayValue" in value:
        return [_plain(v) for v in value["arrayValue"].get("values") or []]
    if "kvlistValue" in value:
        return {
            kv["key"]: _plain(kv.get("value") or {})
            for kv in value["kvlistValue"].get("values") or []
        }
    return None


def make_server(
    port: int = 0,
    store: Optional[str] = None,
    host: str = "127.0.0.1",
    faults: bool = False,
    quiet: bool = False,
    keys: Optional[tuple[str, str]] = None,
) -> DevServer:
    """A bound (not yet serving) dev server; ``server.server_address[1]`` is its port."""
    return DevServer((host, port), store, faults_enabled=faults, quiet=quiet, keys=keys)


def tune_gc() -> None:
    """For a process that only serves (``main``, ``langfuse-dq dev-server``), not for a server
    run inside another program: each OTLP request parses into thousands of small containers
    that live until it is answered, and with the default thresholds the collector rescans
    them several times per request (about a third of the parsing time) to find nothing.
    Collect once 100,000 more objects are alive than at the last collection instead: the
    server keeps nothing between requests, so in practice only cyclic garbage (rare) builds
    up to that."""
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m langfuse_dq.devserver``: the same as ``langfuse-dq dev-server``."""
    parser = argparse.ArgumentParser(prog="langfuse_dq.devserver")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--store", default="dq-store.jsonl")
    parser.add_argument("--faults", action="store_true", help="enable POST /_dq/faults")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    tune_gc()
    server = make_server(args.port, args.store, args.host, args.faults, args.quiet)
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(str(port))
        os.replace(tmp, args.port_file)
    sys.stdout.write(
        f"langfuse-dq dev-server listening on http://{args.host}:{port} (store: {args.store})\n"
    )
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
