"""A client created before fork() keeps working in parent and children (gunicorn --preload,
multiprocessing fork pools): each process writes its own segment, nothing is lost."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

import helpers
from helpers import KEYS, journal_events, journal_lines, offline_client


def test_client_created_before_os_fork_works_in_parent_and_child(queue_dir: str) -> None:
    lf = offline_client(queue_dir)
    lf.trace(name="parent-before")
    pid = os.fork()
    if pid == 0:  # child
        try:
            for i in range(100):
                lf.trace(name=f"child-{i}").span(name="s").end()
        finally:
            os._exit(0)
    for i in range(100):
        lf.trace(name=f"parent-{i}")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lf.shutdown()

    events = journal_events(queue_dir)
    names = [e["body"].get("name") for e in events if e["type"] == "trace-create"]
    assert names.count("parent-before") == 1
    assert {f"child-{i}" for i in range(100)} <= set(names)
    assert {f"parent-{i}" for i in range(100)} <= set(names)
    assert len(events) == 1 + 100 * 3 + 100
    assert len({e["id"] for e in events}) == len(events), "parent and child never share an id"
    assert len({e["body"]["id"] for e in events if e["type"] == "trace-create"}) == 201
    child_pids = {e["_p"] for e in events if str(e["body"].get("name", "")).startswith("child-")}
    assert child_pids == {pid}
    segment_pids = {line["_segment"].split("-")[0] for line in journal_lines(queue_dir)}
    assert segment_pids == {str(os.getpid()), str(pid)}, "the child writes a segment of its own"


def test_fork_while_other_threads_append_leaves_no_torn_line(queue_dir: str) -> None:
    lf = offline_client(queue_dir)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            lf.trace(name="bg", input="z" * 3000)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for th in threads:
        th.start()
    children = []
    try:
        for n in range(10):
            pid = os.fork()
            if pid == 0:
                try:
                    lf.trace(name=f"forked-{n}")
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        stop.set()
        for th in threads:
            th.join()
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    lf.shutdown()
    lines = journal_lines(queue_dir)  # parses every line: a torn line would raise here
    names = {line["body"]["name"] for line in lines if "_c" not in line}
    assert {f"forked-{n}" for n in range(10)} <= names


@pytest.mark.timeout(120)
def test_multiprocessing_fork_pool_children_use_the_inheritedoffline_client(queue_dir: str) -> None:
    helpers.FORK_CLIENT = offline_client(queue_dir)
    helpers.FORK_CLIENT.trace(name="parent")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pids = pool.map(helpers.record_in_child, range(200))
    helpers.FORK_CLIENT.trace(name="parent-after")
    helpers.FORK_CLIENT.shutdown()
    events = journal_events(queue_dir)
    names = [e["body"]["name"] for e in events if e["type"] == "trace-create"]
    assert sorted(n for n in names if n.startswith("child-")) == sorted(
        f"child-{i}" for i in range(200)
    )
    assert "parent" in names and "parent-after" in names
    assert len(events) == 2 + 200 * 3
    assert len(set(pids)) > 1
    assert {e["_p"] for e in events if e["body"].get("name", "").startswith("child-")} == set(pids)


@pytest.mark.timeout(120)
def test_multiprocessing_spawn_pool_children_build_their_ownoffline_client(
    queue_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANGFUSE_DQ_DIR", queue_dir)
    monkeypatch.setenv("LANGFUSE_DQ_AUTOSPAWN", "false")
    monkeypatch.setenv("LANGFUSE_BASE_URL", "http://127.0.0.1:9")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(helpers.record_with_default_client, range(20))
    names = {e["body"]["name"] for e in journal_events(queue_dir)}
    assert names == {f"spawned-{i}" for i in range(20)}
