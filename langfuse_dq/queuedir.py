"""The queue directory: where everything lives, created safely and checked before use.

Layout (format version 1)::

    <queue_dir>/                 0700, owned by the user running the app
      VERSION                    "1": the layout version, checked on open
      journal/                   append-only segments, each written by exactly one process
        <pid>-<start>-<nonce>-<seq>.seg
                                 one JSON envelope per line; see journal.py
      state/                     diskcache.Cache (eviction_policy='none'): the flusher's books:
                                 read cursors, folded open traces, counters, flush receipts
      quarantine/                one JSON file per rejected batch; see quarantine.py
      corrupt-<UTC timestamp>/   damaged files moved aside (never deleted), counted by status
      flusher.lock               filelock held by the one live flusher for its whole life
      flusher.json               the live flusher's pid and start time; mtime = heartbeat
      flusher.log                the flusher's log (stdout and stderr)
      flusher.spawned            mtime = when an app process last spawned a flusher
      receipts/                  one small file per satisfied flush marker (kept an hour)

Writers only ever append to their own journal segment, so the hot path takes no lock shared
with other processes and never touches SQLite. The flusher alone writes ``state/``.
Directories are created ``0700`` and files ``0600`` whatever the umask. A directory owned by
another user is refused: it could have been planted to read our traces.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

LAYOUT_VERSION = "1"
DIR_MODE = 0o700
FILE_MODE = 0o600


class QueueDirError(OSError):
    """The queue directory cannot be used (permissions, owner, read-only, not a directory)."""


@dataclass(frozen=True)
class QueueDir:
    """Paths inside one queue directory."""

    root: str

    @property
    def journal(self) -> str:
        return os.path.join(self.root, "journal")

    @property
    def state(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def quarantine(self) -> str:
        return os.path.join(self.root, "quarantine")

    @property
    def lock_path(self) -> str:
        return os.path.join(self.root, "flusher.lock")

    @property
    def heartbeat_path(self) -> str:
        return os.path.join(self.root, "flusher.json")

    @property
    def spawn_marker_path(self) -> str:
        return os.path.join(self.root, "flusher.spawned")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "flusher.log")

    @property
    def version_path(self) -> str:
        return os.path.join(self.root, "VERSION")


def _make_dir(path: str) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise QueueDirError(errno.ENOTDIR, f"{path} is not a directory")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise QueueDirError(
            errno.EPERM,
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
            "refusing a queue directory another user controls",
        )
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def open_queue_dir(root: str, create: bool = True) -> QueueDir:
    """Check (and with ``create``, make) the queue directory; raise :class:`QueueDirError`.

    Parents are created ``0700`` too. The directory must be writable by us.
    """
    root = os.path.abspath(root)
    qd = QueueDir(root)
    try:
        if create:
            parent = os.path.dirname(root)
            if not os.path.isdir(parent):
                os.makedirs(parent, DIR_MODE, exist_ok=True)
            _make_dir(root)
            for sub in (qd.journal, qd.quarantine):
                _make_dir(sub)
            if not os.path.exists(qd.version_path):
                write_file_atomic(qd.version_path, (LAYOUT_VERSION + "\n").encode())
            # The lock file is made here, private, before filelock ever opens it.
            _touch_private(qd.lock_path)
        elif os.path.lexists(root) and not os.path.isdir(root):
            raise QueueDirError(errno.ENOTDIR, f"{root} is not a directory")
        elif not os.path.isdir(root):
            raise QueueDirError(errno.ENOENT, f"queue directory {root} does not exist")
        else:
            _make_dir(root)
        if not os.access(root, os.W_OK | os.X_OK):
            if os.statvfs(root).f_flag & os.ST_RDONLY:
                raise QueueDirError(
                    errno.EROFS, f"queue directory {root} is on a read-only file system"
                )
            raise QueueDirError(errno.EACCES, f"queue directory {root} is not writable")
        version = _read_version(qd)
        if version is not None and not version.isdigit() and create:
            # Garbage, not a layout we do not know: keep it for inspection, write ours.
            move_aside(qd, qd.version_path)
            write_file_atomic(qd.version_path, (LAYOUT_VERSION + "\n").encode())
            version = LAYOUT_VERSION
        if version is not None and version != LAYOUT_VERSION:
            raise QueueDirError(
                errno.EINVAL,
                f"queue directory {root} has layout version {version}; "
                f"this langfuse-dq reads version {LAYOUT_VERSION}",
            )
    except QueueDirError:
        raise
    except OSError as exc:
        raise QueueDirError(
            exc.errno or errno.EIO, f"queue directory {root} is unusable: {exc.strerror or exc}"
        ) from None
    return qd


def _touch_private(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _read_version(qd: QueueDir) -> str | None:
    try:
        with open(qd.version_path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def corrupt_dir(qd: QueueDir) -> str:
    """A new ``corrupt-<UTC timestamp>`` directory for damaged files of this run."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(qd.root, f"corrupt-{stamp}")
    os.makedirs(path, DIR_MODE, exist_ok=True)
    return path


def move_aside(qd: QueueDir, path: str) -> str:
    """Move a damaged file or directory into ``corrupt-<timestamp>/``; returns where it went.

    Nothing damaged is deleted: a person can look at it (or salvage it) later.
    """
    target_dir = corrupt_dir(qd)
    target = os.path.join(target_dir, os.path.basename(path))
    if os.path.exists(target):
        target = f"{target}.{os.urandom(3).hex()}"
    os.replace(path, target)
    return target


def count_corrupt(qd: QueueDir) -> int:
    """Damaged files moved aside so far (status reports them)."""
    total = 0
    try:
        entries = list(os.scandir(qd.root))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith("corrupt-") and entry.is_dir(follow_symlinks=False):
            try:
                total += len(os.listdir(entry.path))
            except OSError:
                continue
    return total


def write_file_atomic(path: str, data: bytes, fsync: bool = True) -> None:
    """Write ``path`` as a whole or not at all: temp file, fsync, rename, fsync of the dir."""
    directory = os.path.dirname(path)
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort where unsupported)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
