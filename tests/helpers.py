"""Helpers shared by the tests: real processes, a real HTTP server, reading the queue on disk.

Everything here starts real processes and hands back their pids so that the test that started
them stops them. Fork helpers live here too, in one place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

from langfuse_dq import Langfuse
from langfuse_dq.devserver import attribute_values, load_store
from langfuse_dq.journal import list_segments
from langfuse_dq.proc import pid_alive

PYTHON = sys.executable
KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-test", "LANGFUSE_SECRET_KEY": "sk-lf-test-secret-0123456789"}


def offline_client(queue_dir: str, **kwargs: Any) -> Langfuse:
    """A client that only writes the queue: no flusher is spawned, nothing is sent."""
    return Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
        **kwargs,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any LANGFUSE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE")}
    env.update(extra)
    return env


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def stop_proc(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, for a pid we did not start ourselves
    (a flusher a client spawned); reaps it if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def flusher_pid(queue_dir: str) -> Optional[int]:
    """The pid of the flusher process of ``queue_dir``, if one is alive and holds the lock.

    Never this process: a test that flushed in-process leaves its own pid in the heartbeat.
    """
    try:
        with open(os.path.join(queue_dir, "flusher.json"), encoding="utf-8") as fh:
            pid = json.load(fh).get("pid")
    except (OSError, ValueError):
        return None
    if not isinstance(pid, int) or pid == os.getpid() or not pid_alive(pid):
        return None
    from langfuse_dq.queuedir import QueueDir
    from langfuse_dq.spawn import lock_is_held

    return pid if lock_is_held(QueueDir(queue_dir)) else None


def stop_flusher(queue_dir: str) -> None:
    """Stop the flusher a client spawned for ``queue_dir`` (tests stop what they start)."""
    for _ in range(3):
        pid = flusher_pid(queue_dir)
        if pid is None:
            return
        stop_pid(pid)


def python_script(code: str) -> list[str]:
    return [PYTHON, "-c", textwrap.dedent(code)]


def spawn_python(code: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``python -c code`` (dedented)."""
    return subprocess.Popen(python_script(code), env=env, **kwargs)


def run_python(
    code: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` to completion; raises on a non-zero exit with its stderr."""
    proc = subprocess.run(
        python_script(code), env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"child exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- reading the queue ----------------------------------------------------------------------


def journal_lines(queue_dir: str) -> list[dict[str, Any]]:
    """Every complete line of every journal segment, parsed."""
    out: list[dict[str, Any]] = []
    journal = os.path.join(queue_dir, "journal")
    for seg, _size in list_segments(journal):
        with open(os.path.join(journal, seg.name), "rb") as fh:
            data = fh.read()
        for line in data.split(b"\n")[:-1]:
            record = json.loads(line)
            record["_segment"] = seg.name
            out.append(record)
    return out


def journal_events(queue_dir: str) -> list[dict[str, Any]]:
    """The queued event envelopes (control records left out)."""
    return [r for r in journal_lines(queue_dir) if "_c" not in r]


def journal_bytes(queue_dir: str) -> bytes:
    """All bytes of all segments, to look for what must or must not be on disk."""
    journal = Path(queue_dir) / "journal"
    return b"".join(p.read_bytes() for p in sorted(journal.glob("*.seg")))


# --- the test server ------------------------------------------------------------------------


class Server:
    """A real dev server (``langfuse_dq.devserver``) in its own process, with fault injection."""

    def __init__(self, directory: Path, keys: Optional[tuple[str, str]] = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.store = str(directory / "server-store.jsonl")
        port_file = directory / "server-port"
        cmd = [PYTHON, "-m", "langfuse_dq.devserver", "--port", "0", "--port-file", str(port_file)]
        cmd += ["--store", self.store, "--faults", "--quiet"]
        self.proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL)
        wait_for(port_file.exists, 15, what="dev server port file")
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"
        if keys:
            self.faults(keys=list(keys))

    def faults(self, **spec: Any) -> None:
        """Switch faults on or off (see devserver.Faults)."""
        req = urllib.request.Request(
            self.url + "/_dq/faults", data=json.dumps(spec).encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/_dq/stats", timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def records(self) -> list[dict[str, Any]]:
        return load_store(self.store)

    def spans(self) -> list[dict[str, Any]]:
        """Received spans, each with ``attrs`` (plain values) added."""
        out = []
        for record in self.records():
            if record.get("kind") == "span":
                span = dict(record["span"])
                span["attrs"] = attribute_values(span.get("attributes") or [])
                span["scope"] = record.get("scope")
                span["resource"] = record.get("resource")
                out.append(span)
        return out

    def events(self) -> list[dict[str, Any]]:
        """Received ingestion envelopes."""
        return [r["event"] for r in self.records() if r.get("kind") == "event"]

    def stop(self) -> None:
        stop_proc(self.proc)


# --- fork helpers (multiprocessing needs importable functions) ------------------------------

FORK_CLIENT: Any = None


def record_in_child(i: int) -> int:
    """A pool task: record a trace with a span using the client inherited from the parent."""
    trace = FORK_CLIENT.trace(name=f"child-{i}", input={"pid": os.getpid()})
    trace.span(name=f"child-{i}-span").end()
    return os.getpid()


def record_with_default_client(i: int) -> int:
    """A pool task for the spawn start method: the default client comes from the environment."""
    from langfuse_dq import get_client

    lf = get_client()
    lf.trace(name=f"spawned-{i}")
    lf.shutdown()
    return os.getpid()


def start_flusher(
    env: dict[str, str], queue_dir: str, *, idle_exit: bool = True
) -> subprocess.Popen[bytes]:
    """A flusher process for ``queue_dir`` (as the client would spawn it), output to its log."""
    cmd = [PYTHON, "-m", "langfuse_dq.flusher", "--dir", queue_dir]
    if idle_exit:
        cmd.append("--exit-when-idle")
    os.makedirs(queue_dir, mode=0o700, exist_ok=True)
    log = open(os.path.join(queue_dir, "flusher.log"), "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def fill_queue(env: dict[str, str], traces: int, spans_per_trace: int = 1, tag: str = "t") -> int:
    """Write ``traces`` traces (trace + spans + a score each) from a child process.

    Returns the number of events written: 1 + 2 * spans + 1 per trace.
    """
    code = f"""
    from langfuse_dq import Langfuse
    lf = Langfuse(autospawn=False)
    for i in range({traces}):
        trace = lf.trace(name="{tag}-%d" % i, input={{"i": i}}, user_id="u%d" % (i % 7))
        for j in range({spans_per_trace}):
            trace.span(name="{tag}-%d-%d" % (i, j), input={{"j": j}}).end(output={{"ok": True}})
        trace.score(name="quality", value=0.5)
    lf.shutdown()
    """
    run_python(code, {**env, "LANGFUSE_DQ_AUTOSPAWN": "false"}, timeout=300)
    return traces * (2 + 2 * spans_per_trace)


def queue_stats(queue_dir: str) -> dict[str, Any]:
    from langfuse_dq.queuedir import open_queue_dir
    from langfuse_dq.stats import queue_stats as collect

    return collect(open_queue_dir(queue_dir, create=False))


# --- integration tests: processes of a server, what reached the test server -----------------


def marked_processes(name: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has ``name=value``: a process tree started
    with a unique marker can be found again, even after its members were re-parented."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in environ and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def _process_table() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, state letter) of every process in /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
        yield int(entry), int(fields[1]), fields[0]


def zombie_children(pid: int) -> list[int]:
    """Children of ``pid`` that exited and were not reaped."""
    return [child for child, parent, state in _process_table() if parent == pid and state == b"Z"]


def spans_by_trace(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Delivered spans grouped by trace id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for span in server.spans():
        out.setdefault(span["traceId"], []).append(span)
    return out


def delivered_trace_names(server: Server) -> dict[str, set[str]]:
    """Trace name -> names of the spans delivered for it (the root span carries the trace name)."""
    out: dict[str, set[str]] = {}
    for spans in spans_by_trace(server).values():
        names = {s["attrs"].get("langfuse.trace.name") for s in spans} - {None}
        for trace_name in names:
            out.setdefault(str(trace_name), set()).update(s["name"] for s in spans)
    return out


def record_trace_with_default_client(i: int) -> int:
    """A pool task (spawn start method): a trace with a span and a generation, default client."""
    from langfuse_dq import get_client

    lf = get_client()
    trace = lf.trace(name=f"spawned-{i}", input={"i": i})
    with trace.span(name=f"spawned-{i}-span") as span:
        span.generation(name=f"spawned-{i}-gen", model="m").end(output="ok")
    return os.getpid()


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (zombies included)."""
    return [child for child, parent, _state in _process_table() if parent == pid]
