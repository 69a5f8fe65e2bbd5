"""Configuration: constructor keywords win over environment variables, which win over defaults.

Every value is validated once, here; an invalid one raises ``ValueError`` (or ``TypeError`` for
a keyword of the wrong type) naming the keyword or the environment variable it came from.
The secret key is kept out of ``repr()`` and out of every message this module produces.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Callable, Optional

DEFAULT_HOST = "https://cloud.langfuse.com"
#: Events per request (most observations are two events, a create and an end: ~1,100 spans).
#: Four times the official SDK's 512: each request also costs a state commit and HTTP work on
#: the flusher's one busy core, and a backlog drains ~25% faster this way. At 1 KB per span a
#: request is ~1 MB, far below the 5 MB Cloud documents (requests are split at 3.5 MB anyway).
#: The price: a flusher killed mid-request may re-send up to one request's events.
DEFAULT_BATCH_SIZE = 2048
#: Seconds the flusher lets events gather before sending. Events are already safe on disk, so
#: this only trades UI latency against request count: one request a second at low traffic.
DEFAULT_FLUSH_INTERVAL = 1.0
#: 1 GiB holds one to two million typical events: hours of a busy app's traffic through a
#: Langfuse outage, while a runaway producer cannot fill the disk the app itself needs.
DEFAULT_MAX_QUEUE_BYTES = 1 << 30
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OPEN_SECONDS = 3600.0
FULL_POLICIES = ("refuse", "drop_oldest")
TRANSPORTS = ("otlp", "ingestion")
_ENVIRONMENT_RE = re.compile(r"^[a-z0-9_-]{1,40}$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def default_queue_dir() -> str:
    """The per-user state directory: ``$XDG_STATE_HOME/langfuse-dq`` or its platform equivalent."""
    if sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "langfuse-dq")


@dataclasses.dataclass(frozen=True)
class Config:
    """Resolved settings of one client (or of the flusher and CLI)."""

    public_key: Optional[str]
    secret_key: Optional[str] = dataclasses.field(repr=False)
    host: str = DEFAULT_HOST
    queue_dir: str = dataclasses.field(default_factory=default_queue_dir)
    batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    transport: str = "otlp"
    autospawn: bool = True
    enabled: bool = True
    sample_rate: float = 1.0
    release: Optional[str] = None
    environment: Optional[str] = None
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    timeout: float = DEFAULT_TIMEOUT
    full_policy: str = "refuse"
    max_open_seconds: float = DEFAULT_MAX_OPEN_SECONDS
    ca_bundle: Optional[str] = None
    mask: Optional[Callable[[Any], Any]] = dataclasses.field(default=None, repr=False)

    @property
    def has_keys(self) -> bool:
        """Both keys are set."""
        return bool(self.public_key and self.secret_key)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        )
        secret = "'***'" if self.secret_key else "None"
        return f"Config({shown}, secret_key={secret})"

    def flusher_environment(self) -> dict[str, str]:
        """Environment variables that reproduce this configuration in a child process.

        This is how the secret key reaches a spawned flusher: never through argv.
        """
        env: dict[str, str] = {
            "LANGFUSE_BASE_URL": self.host,
            "LANGFUSE_DQ_DIR": self.queue_dir,
            "LANGFUSE_BATCH_SIZE": str(self.batch_size),
            "LANGFUSE_FLUSH_INTERVAL": repr(self.flush_interval),
            "LANGFUSE_DQ_TRANSPORT": self.transport,
            "LANGFUSE_DQ_MAX_BYTES": str(self.max_queue_bytes),
            "LANGFUSE_TIMEOUT": repr(self.timeout),
            "LANGFUSE_DQ_FULL_POLICY": self.full_policy,
            "LANGFUSE_DQ_MAX_OPEN_SECONDS": repr(self.max_open_seconds),
        }
        if self.public_key:
            env["LANGFUSE_PUBLIC_KEY"] = self.public_key
        if self.secret_key:
            env["LANGFUSE_SECRET_KEY"] = self.secret_key
        if self.ca_bundle:
            env["LANGFUSE_DQ_CA_BUNDLE"] = self.ca_bundle
        if self.release:
            env["LANGFUSE_RELEASE"] = self.release
        if self.environment:
            env["LANGFUSE_TRACING_ENVIRONMENT"] = self.environment
        return env


# --- parsing helpers ------------------------------------------------------------------------


def parse_bool(text: str, name: str) -> bool:
    """``true/false/1/0/yes/no/on/off`` in any case."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be true/false/1/0/yes/no, got {text!r}")


def parse_size(text: str, name: str) -> int:
    """Bytes from ``1073741824``, ``512MB``, ``1GiB`` and the like."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(
            f"{name} must be a size in bytes such as 1073741824 or 512MB, got {text!r}"
        )
    unit = (match.group(2) or "").lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"{name} has an unknown unit {match.group(2)!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str, name: str) -> float:
    """Seconds from ``90``, ``1.5``, ``30s``, ``15m``, ``12h`` or ``7d``."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{name} must be a duration such as 30s, 15m, 12h or 7d, got {text!r}")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2).lower()]
    return float(match.group(1)) * factor


def _number(value: Any, name: str, kind: type, minimum: float, exclusive: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if kind is int and not isinstance(value, int):
        if float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        relation = ">" if exclusive else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    return kind(value)


class _Resolver:
    """Looks a setting up in keywords, then in the environment, and says where it came from."""

    def __init__(self, kwargs: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.kwargs = kwargs
        self.environ = environ

    def raw(self, key: str, env_names: tuple[str, ...]) -> tuple[Any, str] | None:
        value = self.kwargs.get(key)
        if value is not None:
            return value, key
        for env_name in env_names:
            text = self.environ.get(env_name)
            if text is not None and text.strip() != "":
                return text.strip(), env_name
        return None

    def string(self, key: str, env_names: tuple[str, ...], default: Optional[str]) -> Optional[str]:
        found = self.raw(key, env_names)
        if found is None:
            return default
        value, source = found
        if not isinstance(value, str):
            raise TypeError(f"{source} must be a str, got {type(value).__name__}")
        return value

    def boolean(self, key: str, env_names: tuple[str, ...], default: bool) -> bool:
        found = self.raw(key, env_names)
        if found is None:
            return default
        value, source = found
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and source != key:
            return parse_bool(value, source)
        raise TypeError(f"{source} must be a bool, got {type(value).__name__}")

    def number(
        self,
        key: str,
        env_names: tuple[str, ...],
        default: Any,
        kind: type,
        minimum: float,
        exclusive: bool = False,
        parse: Callable[[str, str], Any] | None = None,
    ) -> Any:
        found = self.raw(key, env_names)
        if found is None:
            return default
        value, source = found
        if isinstance(value, str) and source == key and parse is None:
            raise TypeError(f"{key} must be a number, got str")
        if isinstance(value, str):
            if parse is not None:
                value = parse(value, source)
            else:
                try:
                    value = float(value) if kind is float else int(value)
                except ValueError:
                    noun = "a whole number" if kind is int else "a number"
                    raise ValueError(f"{source} must be {noun}, got {value!r}") from None
        return _number(value, source, kind, minimum, exclusive)


KEYWORDS = tuple(f.name for f in dataclasses.fields(Config))


def resolve_config(environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> Config:
    """Build a :class:`Config` from keywords, then ``environ`` (default ``os.environ``)."""
    unknown = sorted(set(kwargs) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"unknown configuration keyword(s): {', '.join(unknown)}")
    r = _Resolver(kwargs, os.environ if environ is None else environ)

    host = r.string("host", ("LANGFUSE_BASE_URL", "LANGFUSE_HOST"), DEFAULT_HOST) or DEFAULT_HOST
    host_source = "host" if kwargs.get("host") is not None else "LANGFUSE_BASE_URL/LANGFUSE_HOST"
    host = host.rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise ValueError(f"{host_source} must be an http:// or https:// URL, got {host!r}")

    transport = (r.string("transport", ("LANGFUSE_DQ_TRANSPORT",), "otlp") or "otlp").lower()
    if transport not in TRANSPORTS:
        raise ValueError(
            f"transport/LANGFUSE_DQ_TRANSPORT must be 'otlp' or 'ingestion', got {transport!r}"
        )
    full_policy = (r.string("full_policy", ("LANGFUSE_DQ_FULL_POLICY",), "refuse") or "").lower()
    if full_policy not in FULL_POLICIES:
        raise ValueError(
            "full_policy/LANGFUSE_DQ_FULL_POLICY must be 'refuse' or 'drop_oldest', "
            f"got {full_policy!r}"
        )

    environment = r.string("environment", ("LANGFUSE_TRACING_ENVIRONMENT",), None)
    if environment is not None and (
        not _ENVIRONMENT_RE.match(environment) or environment.startswith("langfuse")
    ):
        raise ValueError(
            "environment/LANGFUSE_TRACING_ENVIRONMENT must be lowercase [a-z0-9_-], at most 40 "
            f"characters, not starting with 'langfuse'; got {environment!r}"
        )

    sample_rate = r.number("sample_rate", ("LANGFUSE_SAMPLE_RATE",), 1.0, float, 0.0)
    if sample_rate > 1.0:
        raise ValueError(
            f"sample_rate/LANGFUSE_SAMPLE_RATE must be between 0 and 1, got {sample_rate}"
        )

    queue_dir = r.string("queue_dir", ("LANGFUSE_DQ_DIR",), None)
    if queue_dir is None:
        queue_dir = default_queue_dir()
    queue_dir = os.path.abspath(os.path.expanduser(os.fspath(queue_dir)))

    mask = kwargs.get("mask")
    if mask is not None and not callable(mask):
        raise TypeError(f"mask must be a callable, got {type(mask).__name__}")

    ca_bundle = r.string("ca_bundle", ("LANGFUSE_DQ_CA_BUNDLE",), None)

    return Config(
        public_key=r.string("public_key", ("LANGFUSE_PUBLIC_KEY",), None),
        secret_key=r.string("secret_key", ("LANGFUSE_SECRET_KEY",), None),
        host=host,
        queue_dir=queue_dir,
        batch_size=r.number(
            "batch_size", ("LANGFUSE_BATCH_SIZE", "LANGFUSE_FLUSH_AT"), DEFAULT_BATCH_SIZE, int, 1
        ),
        flush_interval=r.number(
            "flush_interval",
            ("LANGFUSE_FLUSH_INTERVAL",),
            DEFAULT_FLUSH_INTERVAL,
            float,
            0.0,
            exclusive=True,
        ),
        transport=transport,
        autospawn=r.boolean("autospawn", ("LANGFUSE_DQ_AUTOSPAWN",), True),
        enabled=r.boolean("enabled", ("LANGFUSE_TRACING_ENABLED",), True),
        sample_rate=sample_rate,
        release=r.string("release", ("LANGFUSE_RELEASE",), None),
        environment=environment,
        max_queue_bytes=r.number(
            "max_queue_bytes",
            ("LANGFUSE_DQ_MAX_BYTES",),
            DEFAULT_MAX_QUEUE_BYTES,
            int,
            1,
            parse=parse_size,
        ),
        timeout=r.number(
            "timeout", ("LANGFUSE_TIMEOUT",), DEFAULT_TIMEOUT, float, 0.0, exclusive=True
        ),
        full_policy=full_policy,
        max_open_seconds=r.number(
            "max_open_seconds",
            ("LANGFUSE_DQ_MAX_OPEN_SECONDS",),
            DEFAULT_MAX_OPEN_SECONDS,
            float,
            0.0,
            exclusive=True,
            parse=parse_duration,
        ),
        ca_bundle=ca_bundle,
        mask=mask,
    )
