"""Finding the live flusher of a queue directory, and spawning one when there is none.

The check costs the app one ``stat()`` of the heartbeat file a second at most, never one per
event. Only when the heartbeat is stale does it probe the flusher lock, and only when the lock
is free does it spawn a detached flusher (new session, stdio to ``flusher.log``), passing the
secret key through the environment, never argv. The spawned process is reaped on the next
check, so no zombie lingers in the app; if the app dies first, init adopts it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import filelock

from .config import Config
from .proc import pid_alive
from .queuedir import FILE_MODE, QueueDir

log = logging.getLogger("langfuse_dq")

CHECK_INTERVAL = 1.0
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_STALE = 5.0
#: After a spawn, no process of the app spawns again for this long: the new flusher needs a
#: moment (interpreter start, imports) before it holds the lock and beats.
SPAWN_GRACE = 5.0
LOG_ROTATE_BYTES = 5 << 20


def _touch(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
        os.utime(path, None)
    except OSError:
        pass


def read_heartbeat(qd: QueueDir) -> dict[str, Any]:
    """The flusher's heartbeat record, with its age in seconds (``{}`` when there is none)."""
    try:
        with open(qd.heartbeat_path, encoding="utf-8") as fh:
            record = json.load(fh)
        age = time.time() - os.stat(qd.heartbeat_path).st_mtime
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    record["age"] = age
    return record


def lock_is_held(qd: QueueDir) -> bool:
    """True when some process holds the flusher lock (a flusher, ``worker`` or ``flush``)."""
    if not os.path.exists(qd.lock_path):
        return False
    lock = filelock.FileLock(qd.lock_path, timeout=0, mode=FILE_MODE)
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def flusher_info(qd: QueueDir) -> tuple[Optional[int], bool]:
    """(pid of the flusher, is it alive) as ``status`` reports them."""
    record = read_heartbeat(qd)
    pid = record.get("pid")
    if not isinstance(pid, int):
        return None, False
    start = record.get("start") if isinstance(record.get("start"), int) else 0
    alive = pid_alive(pid, start or 0) and lock_is_held(qd)
    return pid, alive


def python_executable() -> str:
    """The interpreter for the flusher: ``LANGFUSE_DQ_PYTHON`` or this one."""
    return os.environ.get("LANGFUSE_DQ_PYTHON") or sys.executable


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flusher_command(qd: QueueDir, idle_exit: bool = True) -> list[str]:
    """argv of a flusher process: no secrets, only the directory."""
    cmd = [python_executable(), "-m", "langfuse_dq.flusher", "--dir", qd.root]
    if idle_exit:
        cmd.append("--exit-when-idle")
    return cmd


def child_environment(config: Config) -> dict[str, str]:
    """The environment of a spawned flusher: ours, plus the resolved configuration."""
    env = dict(os.environ)
    env.update(config.flusher_environment())
    parent = _package_parent()
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = parent if not path else parent + os.pathsep + path
    env["PYTHONUNBUFFERED"] = "1"
    return env


def open_log(qd: QueueDir) -> int:
    """The flusher log, opened for appending (rotated once it passes 5 MB)."""
    try:
        if os.path.getsize(qd.log_path) > LOG_ROTATE_BYTES:
            os.replace(qd.log_path, qd.log_path + ".1")
    except OSError:
        pass
    fd = os.open(qd.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        pass
    return fd


#: A launcher that starts its argv in a new session and exits at once: the flusher is then
#: adopted by init, so it is never our zombie and outlives us. Runs without importing us.
_LAUNCHER = (
    "import subprocess, sys\n"
    "subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, close_fds=True, "
    "start_new_session=True)\n"
)
LAUNCH_TIMEOUT = 10.0


def spawn_flusher(
    config: Config, qd: QueueDir, wait: float = LAUNCH_TIMEOUT
) -> Optional[subprocess.Popen[bytes]]:
    """Start a detached flusher for ``qd`` (double fork through a tiny launcher).

    The secret key travels in the environment, never in argv. Waits up to ``wait`` seconds
    for the launcher to exit; returns it if it has not yet (reap it later with ``poll()``).
    Raises ``OSError`` when the launcher cannot run.
    """
    log_fd = open_log(qd)
    try:
        launcher = subprocess.Popen(  # noqa: S603 (argv is ours: interpreter, code, directory)
            [python_executable(), "-c", _LAUNCHER, *flusher_command(qd)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=child_environment(config),
            cwd=qd.root,
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    try:
        code = launcher.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        return launcher  # still starting the flusher; the caller reaps it later
    if code != 0:
        raise OSError(f"the flusher launcher exited with status {code}; see {qd.log_path}")
    return None


class FlusherSupervisor:
    """Keeps a flusher alive for one client: cheap periodic checks, spawn when needed."""

    def __init__(self, config: Config, qd: QueueDir) -> None:
        self.config = config
        self.qd = qd
        self.next_check = 0.0
        self._lock = threading.Lock()
        self._spawning = False
        self._launchers: list[subprocess.Popen[bytes]] = []
        self._last_error_logged = 0.0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_child)

    def _after_fork_child(self) -> None:
        self._lock = threading.Lock()
        self._launchers = []
        self._spawning = False
        self.next_check = 0.0

    def poke(self, now: float) -> None:
        """Called after an enqueue: at most one check per CHECK_INTERVAL seconds."""
        if now < self.next_check:
            return
        self.next_check = now + CHECK_INTERVAL
        self.check(background=True)

    def heartbeat_age(self) -> Optional[float]:
        """Seconds since the flusher's last heartbeat (one ``stat``), None when it never beat."""
        try:
            return time.time() - os.stat(self.qd.heartbeat_path).st_mtime
        except OSError:
            return None

    def check(self, background: bool = False, wait: float = LAUNCH_TIMEOUT) -> bool:
        """Spawn a flusher if none is alive. True when one is alive or being started.

        ``wait`` bounds how long a foreground spawn waits for its launcher.
        """
        self._reap()
        age = self.heartbeat_age()
        if age is not None and abs(age) < HEARTBEAT_STALE:
            return True
        if lock_is_held(self.qd):
            # A flusher that is exiting still holds the lock for a moment: look again soon.
            self.next_check = min(self.next_check, time.monotonic() + 0.2)
            return True
        if self._recently_spawned():
            return True  # one is starting up (here or in another process of the app)
        with self._lock:
            if self._spawning:
                return True
            self._spawning = True
        _touch(self.qd.spawn_marker_path)
        if background:
            threading.Thread(target=self._spawn, name="langfuse-dq-spawn", daemon=True).start()
            return True
        return self._spawn(wait)

    def _reap(self) -> None:
        with self._lock:
            self._launchers = [p for p in self._launchers if p.poll() is None]

    def _recently_spawned(self) -> bool:
        try:
            age = time.time() - os.stat(self.qd.spawn_marker_path).st_mtime
        except OSError:
            return False
        return 0 <= age < SPAWN_GRACE

    def _spawn(self, wait: float = LAUNCH_TIMEOUT) -> bool:
        try:
            launcher = spawn_flusher(self.config, self.qd, wait)
            if launcher is not None:
                with self._lock:
                    self._launchers.append(launcher)
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_error_logged > 60:
                self._last_error_logged = now
                log.error("langfuse-dq: could not start the flusher: %s", exc)
            return False
        finally:
            with self._lock:
                self._spawning = False
        return True
