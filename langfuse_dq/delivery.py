"""Waiting for delivery: ``Langfuse.flush()`` and ``langfuse-dq flush`` share this.

A flush writes a marker into the journal and waits for the flusher's receipt of it: the
receipt exists once every event stamped before the marker is delivered (or quarantined or
dropped, which the receipt counts). When no flusher runs, the caller drains in the foreground,
holding the flusher lock; when one runs, it waits for that one, taking over should it die.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .flusher import Flusher, receipts_dir
from .queue import EventQueue
from .queuedir import QueueDir
from .spawn import FlusherSupervisor, lock_is_held
from .timeutil import now_ns

POLL = 0.02


@dataclass
class FlushOutcome:
    """How a flush ended."""

    done: bool
    quarantined: int = 0
    dropped: int = 0
    delivered: int = 0
    auth_error: Optional[str] = None
    ran_here: bool = False

    @property
    def ok(self) -> bool:
        """Everything up to the marker was delivered: nothing quarantined or dropped."""
        return self.done and not self.quarantined and not self.dropped and not self.auth_error


def new_marker_id() -> str:
    return os.urandom(8).hex()


def read_receipt(qd: QueueDir, marker_id: str) -> Optional[dict[str, int]]:
    try:
        with open(os.path.join(receipts_dir(qd), marker_id + ".json"), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def flush_queue(
    config: Config,
    queue: EventQueue,
    timeout: float,
    supervisor: Optional[FlusherSupervisor] = None,
    fail_on_auth: bool = False,
) -> FlushOutcome:
    """Flush ``queue``'s directory; never longer than ``timeout`` seconds."""
    deadline = time.monotonic() + max(timeout, 0.0)
    qd = queue.qd
    if qd is None:
        return FlushOutcome(done=False)
    queue.report_drops()
    marker_id = new_marker_id()
    if not queue.put_control({"_c": "flush", "id": marker_id, "t": now_ns(), "pid": os.getpid()}):
        return FlushOutcome(done=False)
    ran_here = False
    outcome = FlushOutcome(done=False)
    while time.monotonic() < deadline:
        receipt = read_receipt(qd, marker_id)
        if receipt is not None:
            outcome.done = True
            outcome.quarantined = int(receipt.get("quarantined", 0))
            outcome.dropped = int(receipt.get("dropped", 0))
            break
        if not lock_is_held(qd):
            if supervisor is not None and not fail_on_auth:
                supervisor.check(background=False)
                time.sleep(POLL)
                continue
            flusher = Flusher(config, qd)
            flusher.fail_on_auth = fail_on_auth
            if flusher.acquire(timeout=0):
                ran_here = True
                try:
                    result = flusher.run(until_marker=marker_id, deadline=deadline)
                finally:
                    flusher.release()
                outcome.delivered += result.delivered
                if result.auth_error:
                    outcome.auth_error = result.auth_error
                    break
                continue
        time.sleep(POLL)
    outcome.ran_here = ran_here
    return outcome


def wait_for_flush(
    config: Config,
    queue: EventQueue,
    supervisor: Optional[FlusherSupervisor],
    timeout: float,
) -> bool:
    """``Langfuse.flush()``: True when everything enqueued before the call was delivered."""
    try:
        return flush_queue(config, queue, timeout, supervisor).ok
    except Exception:  # noqa: BLE001 (flush must not raise into the app for a disk or network problem)
        return False
