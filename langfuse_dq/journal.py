"""Append-only journal segments: the write-ahead half of the queue.

Each writer process appends to a segment file of its own, ``<pid>-<start>-<nonce>-<seq>.seg``
in ``journal/``, with one ``os.write`` per event on an ``O_APPEND`` descriptor. Once that call
returns the bytes are in the kernel's page cache, so a ``kill -9`` of the writer a microsecond
later loses nothing (a power cut can; see the README). No lock is shared with other processes
and no SQLite connection is involved, which is what keeps enqueue in the tens of microseconds
while many processes write at once.

Format: UTF-8 (in fact ASCII) lines, each one JSON object terminated by ``\\n``. The first
line of a segment is a header ``{"_c":"seg",...}``; other lines whose object has a ``_c`` key
are control records (flush markers, drop counts); every other line is one event envelope.
A line without its ``\\n`` at the end of a segment is an append still in progress, or torn by
a crash if the writer is gone: readers never consume it.

A writer that cannot complete a write (disk full, file-size limit) truncates the segment
back to its last complete line, so a failed append never damages the lines around it.
After ``fork()`` a child never writes to its parent's segment: it opens its own on first use.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

from .proc import pid_alive, process_start_ticks
from .queuedir import FILE_MODE
from .timeutil import now_ns

SEGMENT_BYTES = 8 << 20
SEGMENT_SUFFIX = ".seg"
_NAME_RE = re.compile(r"^(\d+)-(\d+)-([0-9a-f]{8})-(\d{6})\.seg$")
FORMAT_VERSION = 1


class JournalWriteError(OSError):
    """An append did not reach the journal; the event was not enqueued."""


class JournalWriter:
    """Appends encoded lines to this process's own segment. Thread-safe and fork-aware."""

    def __init__(self, journal_dir: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.journal_dir = journal_dir
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._nonce = ""
        self._path = ""
        self._pid = 0
        self._start = 0
        self._unverified = 0
        _WRITERS.add(self)

    @property
    def path(self) -> str:
        """The segment currently written ('' before the first append)."""
        return self._path

    def append(self, line: bytes) -> None:
        """Append one complete line (ending in ``\\n``). Raises :class:`JournalWriteError`."""
        with self._lock:
            if self._fd < 0 or self._size >= self.segment_bytes:
                self._open_next()
            self._write(line)

    def append_many(self, lines: list[bytes]) -> None:
        """Append several lines with one write (all or none)."""
        if lines:
            self.append(b"".join(lines))

    def verify(self) -> int:
        """Check that our segment is still linked in the journal (called about once a second).

        When the segment or the whole queue directory was deleted under us, the lines
        appended since the last check went to an unlinked file: returns how many (0 when all
        is well) and closes it, so the next append starts a new segment.
        """
        with self._lock:
            lost = 0
            if self._fd >= 0:
                try:
                    gone = os.fstat(self._fd).st_nlink == 0
                except OSError:
                    gone = True
                if gone:
                    lost = self._unverified
                    self._close_fd()
            self._unverified = 0
            return lost

    def close(self) -> None:
        """Close the current segment; the next append opens a new one."""
        with self._lock:
            self._close_fd()

    # -- internals (called with the lock held) ---------------------------------------------

    def _write(self, data: bytes) -> None:
        fd = self._fd
        before = self._size
        try:
            written = os.write(fd, data)
        except OSError as exc:
            self._undo(before)
            raise JournalWriteError(exc.errno or errno.EIO, _reason(exc)) from None
        if written != len(data):
            self._undo(before)
            raise JournalWriteError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (short write)")
        self._size = before + written
        self._unverified += 1

    def _undo(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            # Cannot restore a clean end: abandon this segment so the torn bytes are never
            # followed by another line. Readers skip its unterminated tail.
            self._close_fd()

    def _open_next(self) -> None:
        if self._fd >= 0:
            self._close_fd()
        pid = os.getpid()
        if not self._nonce or self._pid != pid:
            self._pid = pid
            self._start = process_start_ticks(pid)
            self._nonce = os.urandom(4).hex()
            self._seq = 0
        self._seq += 1
        name = f"{pid}-{self._start}-{self._nonce}-{self._seq:06d}{SEGMENT_SUFFIX}"
        path = os.path.join(self.journal_dir, name)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            raise JournalWriteError(exc.errno or errno.EIO, _reason(exc)) from None
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            pass
        self._fd = fd
        self._size = 0
        self._path = path
        header = {"_c": "seg", "v": FORMAT_VERSION, "pid": pid, "start": self._start, "t": now_ns()}
        try:
            self._write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        except JournalWriteError:
            self._close_fd()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise

    def _close_fd(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._size = 0
        self._path = ""

    def _reset_after_fork(self) -> None:
        # The inherited descriptor belongs to the parent's segment: drop it without touching
        # the file, and never reuse the parent's lock (another thread may have held it).
        self._lock = threading.Lock()
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._size = 0
        self._path = ""
        self._nonce = ""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- fork handling: one hook for all writers ------------------------------------------------

_WRITERS: weakref.WeakSet[JournalWriter] = weakref.WeakSet()
_held: list[JournalWriter] = []


def _before_fork() -> None:
    # Hold every writer's lock across fork() so the child never inherits a half-done append.
    for writer in list(_WRITERS):
        writer._lock.acquire()
        _held.append(writer)


def _after_fork_parent() -> None:
    while _held:
        _held.pop()._lock.release()


def _after_fork_child() -> None:
    _held.clear()
    for writer in list(_WRITERS):
        writer._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentName:
    """The parts of a segment file name."""

    name: str
    pid: int
    start: int
    nonce: str
    seq: int

    @functools.cached_property
    def writer(self) -> str:
        """Identifies the writing process (all of its segments share it)."""
        return f"{self.pid}-{self.start}-{self.nonce}"


@functools.lru_cache(maxsize=4096)
def parse_segment_name(name: str) -> Optional[SegmentName]:
    """The parts of ``name``, or None when it is not a segment file (cached: the flusher lists
    the journal every round)."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    return SegmentName(
        name, int(match.group(1)), int(match.group(2)), match.group(3), int(match.group(4))
    )


def list_segments(journal_dir: str) -> list[tuple[SegmentName, int]]:
    """Segments in ``journal_dir`` with their sizes, oldest writer sequence first."""
    found: list[tuple[SegmentName, int]] = []
    try:
        entries = list(os.scandir(journal_dir))
    except FileNotFoundError:
        return found
    for entry in entries:
        parsed = parse_segment_name(entry.name)
        if parsed is None:
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        found.append((parsed, size))
    found.sort(key=lambda item: (item[0].writer, item[0].seq))
    return found


def sealed_segments(segments: list[tuple[SegmentName, int]]) -> set[str]:
    """Names of segments that will never grow again.

    A segment is sealed when its writer has moved on to a later one, or its writer is dead.
    """
    latest: dict[str, int] = {}
    for seg, _size in segments:
        latest[seg.writer] = max(latest.get(seg.writer, 0), seg.seq)
    alive: dict[str, bool] = {}
    sealed: set[str] = set()
    for seg, _size in segments:
        if seg.seq < latest[seg.writer]:
            sealed.add(seg.name)
            continue
        if seg.writer not in alive:
            alive[seg.writer] = pid_alive(seg.pid, seg.start)
        if not alive[seg.writer]:
            sealed.add(seg.name)
    return sealed


def read_block(path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """The complete lines of ``path`` from ``offset``, as one block: ``(data, next offset)``.

    ``data`` ends with a newline (or is empty). At most about ``max_bytes`` are read (always
    at least one whole line if there is one). An unterminated last line is left for later.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b"", offset
    try:
        chunks: list[bytes] = []
        total = 0
        position = offset
        while True:
            chunk = os.pread(fd, max(max_bytes - total, 1 << 16), position)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            position += len(chunk)
            if total >= max_bytes and b"\n" in chunk:
                break
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    end = data.rfind(b"\n")
    if end < 0:
        return b"", offset
    if end + 1 < len(data):
        data = data[: end + 1]
    return data, offset + end + 1


def split_block(data: bytes, offset: int) -> list[tuple[int, bytes]]:
    """``[(line offset, line), ...]`` of a block read at ``offset`` (newlines removed)."""
    lines: list[tuple[int, bytes]] = []
    start = offset
    for line in data.split(b"\n")[:-1]:
        lines.append((start, line))
        start += len(line) + 1
    return lines


def read_lines(path: str, offset: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
    """Complete lines of ``path`` from ``offset``: ``([(line offset, line), ...], next offset)``.

    At most about ``max_bytes`` are read (always at least one whole line if there is one).
    An unterminated last line is left for later.
    """
    data, end = read_block(path, offset, max_bytes)
    return split_block(data, offset), end


def scan_tail(path: str, offset: int) -> tuple[int, int, bytes, list[bytes]]:
    """What follows ``offset`` in a segment, streamed in 1 MiB reads.

    Returns (event lines, bytes of complete lines, first event line, control lines).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, 0, b"", []
    lines = 0
    nbytes = 0
    first = b""
    controls: list[bytes] = []
    carry = b""
    position = offset
    try:
        while True:
            chunk = os.pread(fd, 1 << 20, position)
            if not chunk:
                break
            position += len(chunk)
            data = carry + chunk
            last = data.rfind(b"\n")
            if last < 0:
                carry = data
                continue
            complete = data[: last + 1]
            carry = data[last + 1 :]
            lines += complete.count(b"\n")
            nbytes += len(complete)
            start = 0
            while True:
                found = complete.find(b'{"_c":', start)
                if found < 0:
                    break
                if found == 0 or complete[found - 1] == 0x0A:
                    controls.append(complete[found : complete.find(b"\n", found)])
                start = found + 1
            if not first:
                for line in complete.split(b"\n", 16):
                    if line and not line.startswith(b'{"_c":'):
                        first = line
                        break
    finally:
        os.close(fd)
    return lines - len(controls), nbytes, first, controls
