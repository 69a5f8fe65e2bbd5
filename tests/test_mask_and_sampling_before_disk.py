"""Masking, sampling and enabled=False act before anything reaches the disk."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from helpers import journal_bytes, journal_events, offline_client

SECRET_CARD = "4111-1111-1111-1111"


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub(r"\d{4}-\d{4}-\d{4}-\d{4}", "[CARD]", value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def test_mask_runs_on_input_output_and_metadata_before_the_bytes_hit_disk(queue_dir: str) -> None:
    lf = offline_client(queue_dir, mask=_redact)
    trace = lf.trace(
        name="pay", input={"card": SECRET_CARD}, metadata={"note": f"card {SECRET_CARD}"}
    )
    span = trace.span(name="charge", input=[SECRET_CARD])
    span.output = {"receipt": SECRET_CARD}
    span.end()
    gen = trace.generation(name="llm", input=SECRET_CARD)
    gen.end(output=SECRET_CARD)
    trace.update(output=SECRET_CARD)
    trace.score(name="ok", value=1, metadata={"card": SECRET_CARD})
    lf.shutdown()
    raw = journal_bytes(queue_dir)
    assert SECRET_CARD.encode() not in raw
    assert raw.count(b"[CARD]") == 8
    names = [e["body"].get("name") for e in journal_events(queue_dir)]
    assert "pay" in names and "charge" in names  # the rest of the event is kept


def test_sample_rate_zero_writes_nothing_and_one_writes_everything(
    tmp_path: os.PathLike[str],
) -> None:
    none_dir = os.path.join(tmp_path, "none")
    lf = offline_client(none_dir, sample_rate=0.0)
    for _ in range(50):
        t = lf.trace(name="t")
        t.span(name="s").end()
        t.score(name="x", value=1)
    lf.shutdown()
    assert journal_events(none_dir) == []

    all_dir = os.path.join(tmp_path, "all")
    lf = offline_client(all_dir, sample_rate=1.0)
    for _ in range(50):
        lf.trace(name="t")
    lf.shutdown()
    assert len(journal_events(all_dir)) == 50


def test_sampling_is_deterministic_by_trace_id_and_keeps_whole_traces(
    tmp_path: os.PathLike[str],
) -> None:
    dirs = [os.path.join(tmp_path, f"run{i}") for i in range(2)]
    trace_ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(2000)]
    for queue_dir in dirs:
        lf = offline_client(queue_dir, sample_rate=0.3)
        for tid in trace_ids:
            trace = lf.trace(id=tid, name="t")
            trace.span(name="s").end()
            lf.score(trace_id=tid, name="q", value=1)
        lf.shutdown()
    runs = []
    for queue_dir in dirs:
        events = journal_events(queue_dir)
        kept = {e["body"].get("traceId") or e["body"]["id"] for e in events}
        per_trace: dict[str, int] = {}
        for e in events:
            tid = e["body"].get("traceId") or e["body"]["id"]
            per_trace[tid] = per_trace.get(tid, 0) + 1
        assert set(per_trace.values()) == {4}, "a sampled trace keeps all of its events"
        runs.append(kept)
    assert runs[0] == runs[1], "the same trace ids are kept every time"
    assert 0.24 < len(runs[0]) / len(trace_ids) < 0.36


def test_enabled_false_writes_nothing_and_creates_no_directory(tmp_path: os.PathLike[str]) -> None:
    queue_dir = os.path.join(tmp_path, "off")
    lf = offline_client(queue_dir, enabled=False)
    trace = lf.trace(name="t", input="x")
    trace.span(name="s").end()
    lf.score(trace_id=trace.id, name="q", value=1)
    assert not os.path.exists(queue_dir)
