"""A real Celery worker (prefork pool, 2 processes, recycled every 20 tasks) on kombu's
filesystem transport: tasks record traces with a module-level client created in the worker's
main process before the pool forks; every trace is delivered, also a trace continued from the
process that enqueued the tasks (``@observe`` with ``langfuse_trace_id=``)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from helpers import (
    PYTHON,
    Server,
    delivered_trace_names,
    flusher_pid,
    marked_processes,
    run_python,
    spans_by_trace,
    stop_flusher,
    stop_proc,
    wait_for,
    zombie_children,
)

TASKS = """
import os

from celery import Celery

from langfuse_dq import Langfuse, observe

broker = os.environ["DQ_BROKER_DIR"]
app = Celery("dq_tasks", broker="filesystem://")
app.conf.update(
    broker_transport_options={
        "data_folder_in": os.path.join(broker, "queue"),
        "data_folder_out": os.path.join(broker, "queue"),
        "data_folder_processed": os.path.join(broker, "processed"),
        "control_folder": os.path.join(broker, "control"),  # default: ./control in the cwd
        "polling_interval": 0.1,
    },
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)

lf = Langfuse()  # module level: created in the worker's main process, before the pool forks


@app.task(name="dq_tasks.record")
def record(i):
    trace = lf.trace(name=f"task-{i}", input={"i": i}, metadata={"pid": os.getpid()})
    with trace.span(name="work", input={"i": i}) as span:
        span.generation(name="llm", model="gpt-4o-mini", input=f"q{i}").end(output=f"a{i}")
    trace.update(output={"done": i})
    return os.getpid()


@app.task(name="dq_tasks.continued")
@observe(client=lf)
def continued(i):
    return {"i": i, "pid": os.getpid()}
"""

PRODUCE = """
import json, sys
from dq_tasks import continued, record
from langfuse_dq import Langfuse

n = int(sys.argv[1])
for i in range(n):
    record.delay(i)
lf = Langfuse(autospawn=False)
trace = lf.trace(name="web-request")
span = trace.span(name="enqueue")
for i in range(5):
    continued.delay(i, langfuse_trace_id=trace.id, langfuse_parent_observation_id=span.id)
span.end()
lf.shutdown()
print(json.dumps({"trace": trace.id, "span": span.id}))
"""

MARK = "LANGFUSE_DQ_TEST_MARK"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_celery_prefork_worker_tasks_are_all_delivered(
    tmp_path: Path, queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    n = 200
    app_dir = tmp_path / "app"
    broker = tmp_path / "broker"
    for d in (app_dir, broker / "queue", broker / "processed"):
        d.mkdir(parents=True)
    (app_dir / "dq_tasks.py").write_text(textwrap.dedent(TASKS))
    mark = uuid.uuid4().hex
    env = {**client_env, "DQ_BROKER_DIR": str(broker), "PYTHONPATH": str(app_dir), MARK: mark}
    worker_log = tmp_path / "worker.log"
    cmd = [PYTHON, "-m", "celery", "-A", "dq_tasks", "worker", "--pool", "prefork"]
    cmd += ["--concurrency", "2", "--max-tasks-per-child", "20", "--loglevel", "warning"]
    cmd += ["--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"dq-{mark}@%h"]
    with open(worker_log, "ab") as log:
        worker = subprocess.Popen(cmd, cwd=str(app_dir), env=env, stdout=log, stderr=log)
    try:
        produced = run_python(
            f"import sys; sys.argv = ['produce', '{n}']\n" + textwrap.dedent(PRODUCE),
            {**env, "PYTHONPATH": str(app_dir)},
        )
        parent = json.loads(produced.stdout.strip().splitlines()[-1])
        expected = {f"task-{i}" for i in range(n)}

        def missing() -> set[str]:
            names = delivered_trace_names(server)
            return {t for t in expected if names.get(t, set()) != {t, "work", "llm"}}

        wait_for(lambda: not missing(), 120, interval=0.5, what="every task's trace delivered")

        def continued() -> list[dict[str, object]]:
            spans = spans_by_trace(server).get(parent["trace"], [])
            return [s for s in spans if s["name"] == "continued"]

        wait_for(lambda: len(continued()) == 5, 60, what="the continued trace's task spans")
    finally:
        stop_proc(worker, grace=30)
    assert worker.returncode == 0, worker_log.read_text()

    spans = [s for group in spans_by_trace(server).values() for s in group]
    task_spans = [s for s in spans if str(s["attrs"].get("langfuse.trace.name")) in expected]
    assert len(task_spans) == 3 * n
    assert len({s["spanId"] for s in task_spans}) == 3 * n, "each span delivered exactly once"
    pids = {s["attrs"].get("langfuse.trace.metadata.pid") for s in task_spans}
    assert len(pids) > 2, f"pool processes were recycled ({len(pids)} pids ran tasks)"
    for span in continued():
        assert span["parentSpanId"] == parent["span"], "nested under the enqueuing span"
        assert span["attrs"]["langfuse.observation.type"] == "span"

    # Nothing the worker started is left but the flusher, which exits on its own when idle.
    wait_for(
        lambda: set(marked_processes(MARK, mark)) <= {flusher_pid(queue_dir)},
        15,
        what="the worker's processes to be gone",
    )
    assert zombie_children(os.getpid()) == []
    try:
        wait_for(lambda: flusher_pid(queue_dir) is None, 30, what="the idle flusher to exit")
    finally:
        stop_flusher(queue_dir)
    assert marked_processes(MARK, mark) == []
