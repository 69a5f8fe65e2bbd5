"""The langfuse-dq command line, run as real subprocesses: output, exit codes, cron use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    KEYS,
    Server,
    clean_env,
    fill_queue,
    flusher_pid,
    queue_stats,
    start_flusher,
    stop_proc,
    wait_for,
)

_SCRIPT = Path(sys.executable).with_name("langfuse-dq")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "langfuse_dq"]


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``langfuse-dq ARGS`` without a terminal (as cron would)."""
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_every_command_and_each_takes_dir(client_env: dict[str, str]) -> None:
    out = run_cli("--help", env=client_env)
    assert out.returncode == 0
    for command in ("flush", "status", "quarantine", "worker", "check", "demo", "dev-server"):
        assert command in out.stdout
    for command in ("flush", "status", "worker", "check", "demo"):
        sub = run_cli(command, "--help", env=client_env)
        assert sub.returncode == 0 and "--dir" in sub.stdout, command
    for sub_command in ("list", "show", "retry", "purge"):
        sub = run_cli("quarantine", sub_command, "--help", env=client_env)
        assert sub.returncode == 0 and "--dir" in sub.stdout, sub_command


def test_cron_run_sends_nothing_until_flush_then_delivers_everything(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    written = fill_queue(env, 50, spans_per_trace=2)
    time.sleep(1.0)
    assert server.counts()["requests"] == 0, "nothing is sent before the cron job runs"
    assert flusher_pid(queue_dir) is None
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert status["pending"] == written and status["flusher_alive"] is False

    out = run_cli("flush", "--timeout", "60", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "", "silent in cron when all is well"
    assert len(server.spans()) == 50 * 3
    after = json.loads(run_cli("status", "--json", env=env).stdout)
    assert after["pending"] == 0 and after["delivered"] == written
    for key in (
        "pending",
        "pending_bytes",
        "oldest_pending_age_s",
        "in_flight",
        "delivered",
        "quarantined",
        "dropped",
        "flusher_pid",
        "flusher_alive",
        "last_success_at",
        "last_error",
    ):
        assert key in after


def test_flush_exit_codes_for_missing_keys_bad_keys_timeout_and_quarantine(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    no_keys = {k: v for k, v in env.items() if k not in KEYS}
    out = run_cli("flush", env=no_keys)
    assert out.returncode == 3 and "LANGFUSE_PUBLIC_KEY" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr

    fill_queue(env, 3)
    server.faults(keys=["pk-other", "sk-other"])
    out = run_cli("flush", "--timeout", "20", env=env)
    assert out.returncode == 3 and "401" in out.stderr
    assert KEYS["LANGFUSE_SECRET_KEY"] not in out.stderr + out.stdout
    server.faults(keys=None)

    server.faults(status=503, fail_for=60)
    out = run_cli("flush", "--timeout", "2", env=env)
    assert out.returncode == 2 and "not drained" in out.stderr
    server.faults(reset=True)

    lf_env = {**env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    code = """
    from langfuse_dq import Langfuse
    lf = Langfuse()
    lf.trace(name="t").span(name="poison-span").end()
    lf.shutdown()
    """
    from helpers import run_python

    run_python(code, lf_env)
    server.faults(reject_names=["poison"])
    out = run_cli("flush", "--timeout", "30", env=env)
    assert out.returncode == 1 and "quarantine" in out.stderr


def test_flush_cooperates_with_a_running_flusher_every_event_once(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0", "LANGFUSE_BATCH_SIZE": "100"}
    fill_queue(env, 1000, spans_per_trace=2)
    server.faults(delay=0.02)
    flusher = start_flusher(env, queue_dir, idle_exit=False)
    try:
        wait_for(lambda: flusher_pid(queue_dir) == flusher.pid, 20, what="the flusher")
        out = run_cli("flush", "--timeout", "120", env=env)
        assert out.returncode == 0, out.stderr
        assert queue_stats(queue_dir)["pending"] == 0
    finally:
        stop_proc(flusher)
    ids = [s["spanId"] for s in server.spans()]
    assert len(ids) == 3000 and len(set(ids)) == 3000, "every span delivered exactly once"


def test_quarantine_list_show_retry_and_purge(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    code = """
    from langfuse_dq import Langfuse
    lf = Langfuse()
    for i in range(5):
        lf.trace(name=f"t{i}").span(name=f"bad-{i}").end()
    lf.shutdown()
    """
    from helpers import run_python

    run_python(code, env)
    server.faults(reject_names=["bad-"])
    assert run_cli("flush", "--timeout", "30", env=env).returncode == 1
    listed = json.loads(run_cli("quarantine", "list", "--json", env=env).stdout)
    assert len(listed) >= 1 and sum(b["events"] for b in listed) == 10
    for batch in listed:
        assert {"id", "events", "reason", "status", "first_failure_at", "last_failure_at"} <= set(
            batch
        )
        assert batch["status"] == 400
    human = run_cli("quarantine", "list", env=env)
    assert human.returncode == 0 and listed[0]["id"] in human.stdout
    shown = run_cli("quarantine", "show", listed[0]["id"], env=env)
    assert shown.returncode == 0
    record = json.loads(shown.stdout)
    assert record["events"] and "test marker" in record["reason"]
    assert run_cli("quarantine", "show", "q000000000000000", env=env).returncode == 1
    assert run_cli("quarantine", "retry", env=env).returncode == 2, "ids or --all are required"

    server.faults(reject_names=[])  # the server is fixed
    retried = run_cli("quarantine", "retry", "--all", env=env)
    assert retried.returncode == 0 and "10 events" in retried.stdout
    assert run_cli("flush", "--timeout", "30", env=env).returncode == 0
    names = [s["name"] for s in server.spans()]
    assert sorted(n for n in names if n.startswith("bad-")) == [f"bad-{i}" for i in range(5)]
    assert json.loads(run_cli("quarantine", "list", "--json", env=env).stdout) == []

    # purge: quarantine something again, then purge it (respecting --older-than)
    run_python(code.replace("bad-", "worse-"), env)
    server.faults(reject_names=["worse-"])
    assert run_cli("flush", "--timeout", "30", env=env).returncode == 1
    assert (
        "purged 0" in run_cli("quarantine", "purge", "--all", "--older-than", "7d", env=env).stdout
    )
    assert "purged" in run_cli("quarantine", "purge", "--all", env=env).stdout
    assert json.loads(run_cli("quarantine", "list", "--json", env=env).stdout) == []


def test_status_formats_and_max_age_alert(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    fill_queue(env, 2)
    time.sleep(1.2)
    human = run_cli("status", env=env)
    assert human.returncode == 0 and "pending" in human.stdout and "8 events" in human.stdout
    prom = run_cli("status", "--prometheus", env=env)
    assert prom.returncode == 0
    assert "# TYPE langfuse_dq_pending_events gauge" in prom.stdout
    assert f'langfuse_dq_pending_events{{queue_dir="{queue_dir}"}} 8' in prom.stdout
    assert "langfuse_dq_flusher_up" in prom.stdout
    alert = run_cli("status", "--max-age", "1", env=env)
    assert alert.returncode == 1 and "oldest pending event" in alert.stderr
    assert run_cli("status", "--max-age", "3600", env=env).returncode == 0
    assert run_cli("status", "--json", "--prometheus", env=env).returncode == 2


def test_status_of_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    env = clean_env(LANGFUSE_DQ_DIR=str(tmp_path / "nothing-here"))
    out = run_cli("status", "--json", env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["pending"] == 0


@pytest.mark.timeout(180)
def test_worker_stopped_with_sigterm_mid_drain_loses_nothing(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0", "LANGFUSE_BATCH_SIZE": "50"}
    fill_queue(env, 500, spans_per_trace=1)
    server.faults(delay=0.05)
    worker = subprocess.Popen(
        [*CLI, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: len(server.spans()) > 0, 30, what="the worker to deliver")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        stop_proc(worker)
    delivered_by_worker = len(server.spans())
    assert delivered_by_worker < 1000, "stopped mid-drain"
    assert queue_stats(queue_dir)["pending"] > 0
    server.faults(delay=0)
    assert run_cli("flush", "--timeout", "60", env=env).returncode == 0
    spans = [s["spanId"] for s in server.spans()]
    assert len(set(spans)) == 1000
    assert len(spans) == 1000, "a graceful stop re-sends nothing"


def test_check_reports_ok_bad_keys_wrong_host_and_unreachable(
    server: Server, client_env: dict[str, str], tmp_path: Path
) -> None:
    ok = run_cli("check", env=client_env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    server.faults(keys=["pk-x", "sk-x"])
    bad = run_cli("check", env=client_env)
    assert bad.returncode == 3 and "refused" in bad.stderr
    assert KEYS["LANGFUSE_SECRET_KEY"] not in bad.stderr
    server.faults(keys=None)
    wrong = run_cli("check", env={**client_env, "LANGFUSE_BASE_URL": server.url + "/not-langfuse"})
    assert wrong.returncode == 3 and "404" in wrong.stderr
    down = run_cli(
        "check", "--timeout", "2", env={**client_env, "LANGFUSE_BASE_URL": "http://127.0.0.1:9"}
    )
    assert down.returncode == 3 and "connection refused" in down.stderr
    no_keys = run_cli("check", env=clean_env(LANGFUSE_BASE_URL=server.url))
    assert no_keys.returncode == 3


def test_dev_server_prints_a_line_per_request_and_stores_what_it_receives(tmp_path: Path) -> None:
    store = tmp_path / "store.jsonl"
    proc = subprocess.Popen(
        [*CLI, "dev-server", "--port", "0", "--store", str(store)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in banner
        url = banner.split("listening on ")[1].split(" ")[0]
        env = clean_env(LANGFUSE_BASE_URL=url, LANGFUSE_DQ_DIR=str(tmp_path / "q"), **KEYS)
        from helpers import run_python

        run_python(
            """
            from langfuse_dq import Langfuse
            lf = Langfuse(flush_interval=0.2)
            lf.trace(name="via-dev-server").span(name="s").end()
            assert lf.flush(timeout=30)
            """,
            env,
        )
        line = proc.stdout.readline()
        assert "POST /api/public/otel/v1/traces" in line and "-> 200" in line
        stored = [json.loads(x) for x in store.read_text().splitlines()]
        assert {r["span"]["name"] for r in stored if r["kind"] == "span"} == {"via-dev-server", "s"}
    finally:
        from helpers import stop_flusher

        stop_flusher(str(tmp_path / "q"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stop_proc(proc)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="langfuse 5.0.4 needs Python >= 3.10")
def test_dev_server_stores_what_the_official_sdk_5_0_4_sends(tmp_path: Path) -> None:
    store = tmp_path / "official.jsonl"
    proc = subprocess.Popen(
        [*CLI, "dev-server", "--port", "0", "--store", str(store), "--quiet"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("listening on ")[1].split(" ")[0]
        from helpers import run_python

        run_python(
            """
            import os
            from langfuse import Langfuse
            lf = Langfuse(public_key="pk-lf-x", secret_key="sk-lf-x", base_url=os.environ["URL"])
            with lf.start_as_current_observation(name="official-root", as_type="span") as root:
                gen = root.start_observation(name="official-gen", as_type="generation", model="m")
                gen.update(usage_details={"input": 1, "output": 2})
                gen.end()
                root.score_trace(name="q", value=1.0)
            lf.flush()
            lf.shutdown()
            """,
            clean_env(URL=url),
            timeout=90,
        )
        wait_for(
            lambda: store.exists() and store.read_text().count("\n") >= 3, 20, what="official data"
        )
        stored = [json.loads(x) for x in store.read_text().splitlines()]
        names = {r["span"]["name"] for r in stored if r["kind"] == "span"}
        assert names == {"official-root", "official-gen"}
        assert any(r["kind"] in ("score", "event") for r in stored), "the score arrived too"
        gen = next(
            r["span"] for r in stored if r["kind"] == "span" and r["span"]["name"] == "official-gen"
        )
        assert len(gen["traceId"]) == 32 and len(gen["spanId"]) == 16, "protobuf ids decoded to hex"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stop_proc(proc)


@pytest.mark.timeout(180)
def test_demo_exits_0_and_prints_its_summary(tmp_path: Path) -> None:
    out = run_cli("demo", "--writers", "3", "--requests", "100", env=clean_env(), timeout=170)
    assert out.returncode == 0, out.stdout + out.stderr
    for label in (
        "events written",
        "delivered",
        "duplicates      0",
        "received spans",
        "all delivered",
    ):
        assert label in out.stdout
    store = out.stdout.split("received spans  ")[1].split()[0]
    assert os.path.exists(store)
    lines = Path(store).read_text().splitlines()
    assert sum(1 for x in lines if '"kind":"span"' in x) == 3 * 100 * 4


def test_cron_wrapper_flushes_and_logs_one_line_per_run(
    queue_dir: str, server: Server, client_env: dict[str, str]
) -> None:
    wrapper = Path(__file__).resolve().parents[1] / "bin" / "langfuse-dq-cron"
    installed = Path(sys.executable).with_name("langfuse-dq-cron")
    script = str(installed if installed.exists() else wrapper)
    env = {**client_env, "LANGFUSE_DQ_AUTOSPAWN": "0"}
    fill_queue(env, 5)
    out = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""
    log = (Path(queue_dir) / "cron.log").read_text().splitlines()
    assert len(log) == 1 and "exit=0 (all delivered)" in log[0]
    assert len(server.spans()) == 10

    no_keys = {k: v for k, v in env.items() if k not in KEYS}
    failed = subprocess.run(["sh", script], env=no_keys, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3
    assert "exit=3 (configuration or authentication error)" in failed.stderr
    assert len((Path(queue_dir) / "cron.log").read_text().splitlines()) == 2
