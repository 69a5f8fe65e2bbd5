"""HTTP to Langfuse: one ``requests.Session`` per process, and what each answer means.

Classification follows WIRE §5: 2xx is success (a 207 is read event by event by the
ingestion transport); 408, 429 and 5xx are retried with backoff (``Retry-After`` honoured);
401/403 (bad keys, usage suspended) and 404/405 (wrong host, server too old) keep the data
and back off long; 413 splits the batch; other 4xx reject it (the flusher bisects to the bad
events and quarantines them). Network errors are retried; when the request may have reached
the server (a read timeout, a reset after sending) a retry can duplicate it, and says so.
"""

from __future__ import annotations

import base64
import email.utils
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import requests

from .. import __version__
from ..config import Config

SDK_NAME = "langfuse-dq"
MAX_RETRY_AFTER = 600.0
#: Answers are read whole (a 207 for a large batch lists every event); 16 MiB is a sanity bound.
MAX_BODY_TEXT = 16 << 20


@dataclass
class Response:
    """What the server said."""

    status: int
    headers: Mapping[str, str]
    text: str


@dataclass
class Verdict:
    """What to do about an answer: ok, retry, auth, config, split or reject."""

    action: str
    status: Optional[int]
    message: str
    retry_after: Optional[float] = None
    maybe_sent: bool = False


class TransportError(Exception):
    """No answer: ``maybe_sent`` is True when the request may have reached the server."""

    def __init__(self, message: str, maybe_sent: bool) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = parsed.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify(response: Response) -> Verdict:
    """Map an HTTP answer to an action (see module docstring)."""
    status = response.status
    body = _short(response.text)
    if 200 <= status < 300:
        return Verdict("ok", status, body)
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Verdict(
            "retry", status, f"HTTP {status}: {body}" if body else f"HTTP {status}", retry_after
        )
    if status in (401, 403):
        what = "authentication failed (check LANGFUSE_PUBLIC_KEY/SECRET_KEY and host)"
        if status == 403:
            what = "forbidden (usage suspended or keys lack access)"
        return Verdict("auth", status, f"HTTP {status}: {what}: {body}")
    if status in (404, 405):
        return Verdict(
            "config",
            status,
            f"HTTP {status}: endpoint not found; is the host right, and is the server at least "
            f"v3.22 (OTLP)? {body}",
        )
    if status == 413:
        return Verdict("split", status, f"HTTP 413: request too large: {body}")
    return Verdict("reject", status, f"HTTP {status}: {body}")


class Backoff:
    """Exponential backoff with jitter; ``Retry-After`` wins when the server gives one."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self, retry_after: Optional[float] = None) -> float:
        delay = min(self.cap, self.base * (2.0**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        jittered = delay * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return max(retry_after, 0.0)
        return jittered

    def reset(self) -> None:
        self.attempt = 0


class HttpSender:
    """Posts to the configured host. The secret key lives only in the session's auth header."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.host = config.host.rstrip("/")
        self._session: Optional[requests.Session] = None
        self._pid = 0
        #: proxies and TLS verification from the environment, looked up once per session
        self._settings: Any = {}
        token = base64.b64encode(
            f"{config.public_key or ''}:{config.secret_key or ''}".encode()
        ).decode("ascii")
        self._auth = "Basic " + token

    def _get_session(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            # Never reuse a Session (and its sockets) across fork().
            session = requests.Session()
            session.headers.update(
                {
                    "Authorization": self._auth,
                    "User-Agent": f"{SDK_NAME}/{__version__}",
                    "x-langfuse-sdk-name": SDK_NAME,
                    "x-langfuse-sdk-version": __version__,
                    "x-langfuse-public-key": self.config.public_key or "",
                }
            )
            session.verify = self.config.ca_bundle or True
            # What requests would look up in the environment at every request (proxies,
            # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE, ~/.netrc; it scans os.environ twice per
            # request, most of its own CPU time): looked up once for our one host, then passed
            # explicitly, with the per-request lookups off. The outcome is the same.
            url = self.host + "/"
            self._settings = session.merge_environment_settings(url, {}, None, None, None)
            if session.auth is None:
                session.auth = requests.utils.get_netrc_auth(url)
            session.trust_env = False
            self._session = session
            self._pid = os.getpid()
        return self._session

    def _scrub(self, text: str) -> str:
        secret = self.config.secret_key
        if secret and secret in text:
            text = text.replace(secret, "***")
        if self._auth in text:
            text = text.replace(self._auth, "Basic ***")
        return text

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> Response:
        """One request; raises :class:`TransportError` when there is no answer."""
        url = self.host + path
        limit = self.config.timeout if timeout is None else timeout
        try:
            session = self._get_session()
            resp = session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                timeout=(min(limit, 10.0), limit),
                allow_redirects=False,
                proxies=self._settings.get("proxies"),
                verify=self._settings.get("verify"),
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise TransportError(self._scrub(f"connect timeout: {exc}"), maybe_sent=False) from None
        except requests.exceptions.SSLError as exc:
            raise TransportError(self._scrub(f"TLS error: {exc}"), maybe_sent=False) from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            refused = any(
                marker in text
                for marker in (
                    "Connection refused",
                    "NewConnectionError",
                    "Name or service not known",
                    "nodename nor servname",
                    "Temporary failure in name resolution",
                    "No route to host",
                    "Network is unreachable",
                )
            )
            raise TransportError(
                self._scrub(f"connection error: {exc}"), maybe_sent=not refused
            ) from None
        except requests.exceptions.Timeout as exc:
            raise TransportError(self._scrub(f"read timeout: {exc}"), maybe_sent=True) from None
        except requests.exceptions.RequestException as exc:
            raise TransportError(self._scrub(f"request failed: {exc}"), maybe_sent=True) from None
        text = resp.text[:MAX_BODY_TEXT] if resp.content else ""
        return Response(resp.status_code, resp.headers, self._scrub(text))

    def post(self, path: str, body: bytes, content_type: str, gzip: bool = False) -> Response:
        headers = {"Content-Type": content_type}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        if path.endswith("/otel/v1/traces"):
            headers["x-langfuse-ingestion-version"] = "4"
        return self.request("POST", path, body, headers)

    def close(self) -> None:
        if self._session is not None and self._pid == os.getpid():
            self._session.close()
        self._session = None
