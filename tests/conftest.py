"""Fixtures: an isolated environment, a queue directory, a real server on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import KEYS, Server, clean_env, stop_flusher

# Spawned flushers in tests should not linger for the production default of 30 s.
os.environ["LANGFUSE_DQ_IDLE_EXIT"] = "3"
os.environ["LANGFUSE_DQ_RETRY_BASE"] = "0.2"
os.environ["LANGFUSE_DQ_RETRY_CAP"] = "2"
os.environ["LANGFUSE_DQ_AUTH_RETRY_BASE"] = "0.5"
os.environ["LANGFUSE_DQ_AUTH_RETRY_CAP"] = "2"


_KNOBS = (
    "LANGFUSE_DQ_IDLE_EXIT",
    "LANGFUSE_DQ_RETRY_BASE",
    "LANGFUSE_DQ_RETRY_CAP",
    "LANGFUSE_DQ_AUTH_RETRY_BASE",
    "LANGFUSE_DQ_AUTH_RETRY_CAP",
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LANGFUSE_* setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LANGFUSE") and name not in _KNOBS:
            monkeypatch.delenv(name, raising=False)
    logging.getLogger("langfuse_dq").setLevel(logging.INFO)


@pytest.fixture
def queue_dir(tmp_path: Path) -> Iterator[str]:
    """A fresh queue directory; any flusher spawned for it is stopped afterwards."""
    path = str(tmp_path / "queue")
    yield path
    stop_flusher(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real Langfuse-compatible server process on 127.0.0.1, with fault injection."""
    srv = Server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def client_env(queue_dir: str, server: Server) -> dict[str, str]:
    """Environment for a child process that writes to ``queue_dir`` and sends to ``server``."""
    return clean_env(
        LANGFUSE_BASE_URL=server.url,
        LANGFUSE_DQ_DIR=queue_dir,
        LANGFUSE_DQ_IDLE_EXIT="3",
        **KEYS,
    )


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, mounted for the test (root only) and unmounted afterwards."""
    point = tmp_path / "mnt"
    point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); needs root")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
