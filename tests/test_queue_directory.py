"""The queue directory: private permissions whatever the umask, refused when unsafe, and an
unusable one disables recording with one clear error instead of crashing or flooding logs."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers import journal_events, offline_client


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_directories_are_0700_and_files_0600_even_with_a_permissive_umask(queue_dir: str) -> None:
    old = os.umask(0)
    try:
        lf = offline_client(queue_dir)
        lf.trace(name="t")
        lf.shutdown()
    finally:
        os.umask(old)
    for sub in ("", "journal", "quarantine"):
        assert _mode(os.path.join(queue_dir, sub)) == 0o700, sub
    files = [os.path.join(queue_dir, "VERSION")] + [
        str(p) for p in Path(queue_dir, "journal").iterdir()
    ]
    assert files
    for path in files:
        assert _mode(path) == 0o600, path


def test_an_existing_directory_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    queue_dir = tmp_path / "loose"
    queue_dir.mkdir(mode=0o755)
    os.chmod(queue_dir, 0o755)
    offline_client(str(queue_dir)).trace(name="t")
    assert _mode(str(queue_dir)) == 0o700


def test_a_file_in_place_of_the_directory_disables_recording_with_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("oops")
    with caplog.at_level(logging.WARNING, logger="langfuse_dq"):
        lf = offline_client(str(blocker))
        started = time.perf_counter()
        for i in range(2000):
            lf.trace(name=f"t{i}").span(name="s").end()
        elapsed = time.perf_counter() - started
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert str(blocker) in errors[0].getMessage()
    assert lf._queue is not None and lf._queue.dropped_total == 6000
    assert elapsed < 5, "a broken directory must not slow the app down"
    assert blocker.read_text() == "oops"
    assert lf.flush(timeout=0.2) is False


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can create a directory owned by another user"
)
def test_a_directory_owned_by_another_user_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    with caplog.at_level(logging.ERROR, logger="langfuse_dq"):
        lf = offline_client(str(planted))
        lf.trace(name="secret data")
    assert any("owned by uid 65534" in r.getMessage() for r in caplog.records)
    assert list(planted.iterdir()) == []


def test_read_only_filesystem_drops_with_one_error_then_recovers_when_writable(
    small_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue_dir = str(small_mount / "queue")
    lf = offline_client(queue_dir)
    lf.trace(name="before")
    lf.shutdown()  # closes the segment, so the filesystem can be remounted read-only
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    with caplog.at_level(logging.WARNING, logger="langfuse_dq"):
        for i in range(500):
            lf.trace(name=f"ro-{i}")
        time.sleep(0.6)
        lf.trace(name="still-ro")
        subprocess.run(["mount", "-o", "remount,rw", str(small_mount)], check=True)
        time.sleep(0.6)
        deadline = time.monotonic() + 5
        while lf._queue is not None and not lf._queue.usable and time.monotonic() < deadline:
            lf.trace(name="probe")
            time.sleep(0.1)
        lf.trace(name="after")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Read-only file system" in errors[0]
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    names = [e["body"]["name"] for e in journal_events(queue_dir)]
    assert names[0] == "before" and names[-1] == "after"
    assert not any(n.startswith("ro-") for n in names)
    lf.shutdown()
    dropped = [line for line in _controls(queue_dir) if line.get("_c") == "drop"]
    assert sum(sum(d["reasons"].values()) for d in dropped) >= 501


def _controls(queue_dir: str) -> list[dict[str, object]]:
    from helpers import journal_lines

    return [line for line in journal_lines(queue_dir) if "_c" in line]
