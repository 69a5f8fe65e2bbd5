"""Options and helpers shared by every command."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable, Optional, TypeVar

import click

from ..config import Config, resolve_config
from ..queuedir import QueueDir, QueueDirError, open_queue_dir

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_CONFIG = 3


class CliError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED, debug: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.debug = debug


def common_options(func: F) -> F:
    """``--dir`` and ``--debug``, which every command takes."""

    @click.option(
        "--dir",
        "queue_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Queue directory (default: LANGFUSE_DQ_DIR or the per-user state directory).",
    )
    @click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
    @functools.wraps(func)
    def wrapper(*args: Any, queue_dir: Optional[str], debug: bool, **kwargs: Any) -> Any:
        setup_logging(debug)
        try:
            return func(*args, queue_dir=queue_dir, debug=debug, **kwargs)
        except CliError as exc:
            exc.debug = debug
            raise
        except (ValueError, TypeError) as exc:
            if debug:
                raise
            raise CliError(str(exc), EXIT_CONFIG) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(debug: bool) -> None:
    """Library logs to stderr: warnings and errors, everything with ``--debug``."""
    logger = logging.getLogger("langfuse_dq")
    if not any(getattr(h, "_langfuse_dq_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._langfuse_dq_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def load_config(queue_dir: Optional[str], need_keys: bool = False) -> Config:
    """Configuration from the environment, ``--dir`` winning over LANGFUSE_DQ_DIR."""
    try:
        config = resolve_config(queue_dir=queue_dir)
    except (ValueError, TypeError) as exc:
        raise CliError(f"configuration error: {exc}", EXIT_CONFIG) from None
    if need_keys and not config.has_keys:
        raise CliError(
            "configuration error: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY must be set",
            EXIT_CONFIG,
        )
    return config


def open_dir(config: Config, create: bool = False) -> QueueDir:
    """The queue directory, or a one-line error (exit 3) when it cannot be used."""
    try:
        return open_queue_dir(config.queue_dir, create=create)
    except QueueDirError as exc:
        raise CliError(str(exc.strerror or exc), EXIT_CONFIG) from None


def is_terminal() -> bool:
    """Interactive use (progress bars) rather than cron or a pipe."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
