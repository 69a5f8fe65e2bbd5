"""Is a process still alive? Pid checks that survive pid reuse and zombies where the OS allows.

On Linux a process is identified by (pid, start time in clock ticks since boot) from
``/proc/<pid>/stat``, and a zombie (exited, not yet reaped) counts as dead. Elsewhere the pid
alone is checked with ``kill(pid, 0)``.
"""

from __future__ import annotations

import os
from typing import Optional


def _read_stat(pid: int) -> Optional[tuple[bytes, int]]:
    """(state letter, start ticks) of ``pid`` from /proc, or None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0], int(fields[19])  # fields 3 and 22 overall
    except (ValueError, IndexError):
        return None


def process_start_ticks(pid: int) -> int:
    """The start time of ``pid`` in clock ticks since boot, or 0 where unknown."""
    found = _read_stat(pid)
    return found[1] if found else 0


def pid_alive(pid: int, start_ticks: int = 0) -> bool:
    """True when ``pid`` runs and, if ``start_ticks`` is known, is the same process as then."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    found = _read_stat(pid)
    if found is None:
        return True
    state, start = found
    if state == b"Z":
        return False
    return not (start_ticks and start != start_ticks)
