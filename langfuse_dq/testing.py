"""A pytest plugin for your own test suite: capture what your code records, assert on it.

Installed with langfuse-dq (the ``pytest11`` entry point ``langfuse_dq``), so the fixture is
available without any configuration; ``-p no:langfuse_dq`` turns the plugin off. Example::

    from langfuse_dq import get_client, observe

    @observe()
    def retrieve(query):
        return ["doc-1", "doc-2"]

    def test_retrieve_is_traced(langfuse_capture):
        retrieve("capital of France")
        span = langfuse_capture.assert_recorded(type="span", name="retrieve")
        assert span["input"] == {"query": "capital of France"}
        assert span["output"] == ["doc-1", "doc-2"]
        langfuse_capture.assert_not_recorded(level="ERROR")

While the fixture is active, **every** ``Langfuse`` client of the test process records into a
temporary queue directory that the fixture reads back, and nothing is sent anywhere:

- the default client (``get_client()``), created before the test or during it;
- clients your code constructs itself, before the test (a module-level ``lf = Langfuse()``,
  with or without keys) or during it (whatever keywords it was given);
- sampling and ``enabled=False`` are overridden (everything is recorded), the ``mask`` still
  runs, as in production; ``flush()`` returns True at once; no flusher is started.

After the test every client is put back as it was. Child processes the test starts inherit
environment variables that make a client they build write to the same capture directory
(``LANGFUSE_DQ_DIR``, dummy keys, ``LANGFUSE_DQ_AUTOSPAWN=false``); they must not call
``flush()``, which would wait for its timeout since nothing listens.

What you can look at (:class:`Capture`):

- ``records``: one dict per trace, span, generation, event and score, the create and update
  events folded together (the latest value of each field wins, ``metadata`` merged per key),
  with snake_case keys: ``type``, ``id``, ``trace_id``, ``parent_observation_id``, ``name``,
  ``input``, ``output``, ``metadata``, ``level``, ``status_message``, ``model``,
  ``usage_details``, ``user_id``, ``value`` (scores)... Values are as stored: JSON types, so a
  tuple reads back as a list and a datetime as an ISO string.
- ``events`` / ``last_event``: the raw event envelopes (``type``, ``id``, ``timestamp``,
  ``body`` in wire camelCase), in the order they were written.
- ``find(**criteria)``, ``assert_recorded(**criteria)``, ``assert_not_recorded(**criteria)``:
  criteria are record keys (``type="span"``, ``name="retrieve"``, ``output=...``); a value may be
  a callable, a predicate on the recorded value. ``assert_recorded`` returns the first match
  and on failure lists everything that was recorded, with the fields that did not match.
- ``clear()``: forget what was recorded so far.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from . import client as _client_module
from .client import Langfuse
from .journal import list_segments
from .queue import EventQueue

__all__ = ["Capture", "langfuse_capture"]

#: Where a captured client "sends": nothing listens on the discard port.
CAPTURE_HOST = "http://127.0.0.1:9"
CAPTURE_ENV = {
    "LANGFUSE_PUBLIC_KEY": "pk-lf-capture",
    "LANGFUSE_SECRET_KEY": "sk-lf-capture",
    "LANGFUSE_BASE_URL": CAPTURE_HOST,
    "LANGFUSE_DQ_AUTOSPAWN": "false",
    "LANGFUSE_TRACING_ENABLED": "true",
    "LANGFUSE_SAMPLE_RATE": "1",
}
_KINDS = {
    "trace-create": "trace",
    "span-create": "span",
    "span-update": "span",
    "generation-create": "generation",
    "generation-update": "generation",
    "event-create": "event",
    "score-create": "score",
}
_SHOWN = 60
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_MISSING = object()

_session: Optional[Capture] = None


def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


class Capture:
    """The events recorded while the ``langfuse_capture`` fixture is active."""

    def __init__(self, queue_dir: str) -> None:
        self.queue_dir = queue_dir
        self._queue = EventQueue(queue_dir, 1 << 40)
        self._restores: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._cleared: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Raw event envelopes (``id``, ``type``, ``timestamp``, ``body``), oldest first."""
        found: list[tuple[int, int, dict[str, Any]]] = []
        journal = os.path.join(self.queue_dir, "journal")
        n = 0
        for seg, _size in list_segments(journal):
            try:
                with open(os.path.join(journal, seg.name), "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            for line in data.split(b"\n")[:-1]:
                n += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or "_c" in record:
                    continue
                if record.get("id") in self._cleared:
                    continue
                stamp = record.get("_t")
                t = stamp if isinstance(stamp, int) else 0
                event = {k: v for k, v in record.items() if not k.startswith("_")}
                found.append((t, n, event))
        found.sort(key=lambda item: (item[0], item[1]))
        return [event for _t, _n, event in found]

    @property
    def last_event(self) -> Optional[dict[str, Any]]:
        """The most recent raw event envelope, or None."""
        events = self.events
        return events[-1] if events else None

    @property
    def records(self) -> list[dict[str, Any]]:
        """Traces, spans, generations, events and scores, create and updates folded together."""
        out: list[dict[str, Any]] = []
        by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for event in self.events:
            kind = _KINDS.get(str(event.get("type")))
            body = event.get("body")
            if kind is None or not isinstance(body, dict):
                continue
            obj_id = str(body.get("id"))
            key = (kind, obj_id)
            record = by_key.get(key)
            if record is None or kind == "score":
                record = {"type": kind, "id": obj_id}
                if kind == "trace":
                    record["trace_id"] = obj_id
                by_key[key] = record
                out.append(record)
            for wire, value in body.items():
                if wire == "id":
                    continue
                name = _snake(wire)
                old = record.get(name)
                if name == "metadata" and isinstance(old, dict) and isinstance(value, dict):
                    record[name] = {**old, **value}
                else:
                    record[name] = value
        return out

    @property
    def last(self) -> Optional[dict[str, Any]]:
        """The record that was created last (trace, observation or score), or None."""
        records = self.records
        return records[-1] if records else None

    def find(self, **criteria: Any) -> list[dict[str, Any]]:
        """Every record matching all ``criteria`` (a value may be a predicate callable)."""
        return [r for r in self.records if not _mismatches(r, criteria)]

    def assert_recorded(self, count: Optional[int] = None, **criteria: Any) -> dict[str, Any]:
        """Fail unless a record matches ``criteria`` (exactly ``count`` of them, if given).

        Returns the first match. The failure message lists what was recorded.
        """
        records = self.records
        matches = [r for r in records if not _mismatches(r, criteria)]
        if matches and (count is None or len(matches) == count):
            return matches[0]
        wanted = _describe_criteria(criteria)
        if not matches:
            head = f"langfuse_capture: nothing recorded matches {wanted}"
        else:
            head = (
                f"langfuse_capture: expected {count} records matching {wanted}, "
                f"found {len(matches)}"
            )
        pytest.fail(head + "\n" + _listing(records, criteria), pytrace=False)

    def assert_not_recorded(self, **criteria: Any) -> None:
        """Fail if any record matches ``criteria``; the message shows the offending ones."""
        records = self.records
        matches = [r for r in records if not _mismatches(r, criteria)]
        if matches:
            pytest.fail(
                f"langfuse_capture: expected no record matching {_describe_criteria(criteria)}, "
                f"found {len(matches)}\n" + _listing(matches, {}),
                pytrace=False,
            )

    def clear(self) -> None:
        """Forget everything recorded so far (later ``events``/``records`` start empty)."""
        self._cleared.update(str(e.get("id")) for e in self.events)

    # -- redirecting clients ---------------------------------------------------------------

    def _redirect(self, client: Langfuse) -> None:
        """Make ``client`` write into the capture directory, nothing else (undone by restore)."""
        with self._lock:
            if id(client) not in self._restores:
                self._restores[id(client)] = client._capture_into(self._queue)

    def _restore_all(self) -> None:
        with self._lock:
            restores, self._restores = self._restores, {}
        for restore in restores.values():
            restore()
        self._queue.close()


def _mismatches(record: dict[str, Any], criteria: dict[str, Any]) -> list[str]:
    """The criteria keys ``record`` does not satisfy."""
    bad = []
    for key, expected in criteria.items():
        actual = record.get(key, _MISSING)
        if callable(expected) and not isinstance(expected, type):
            ok = actual is not _MISSING and bool(expected(actual))
        else:
            ok = actual is not _MISSING and actual == expected
        if not ok:
            bad.append(key)
    return bad


def _describe_criteria(criteria: dict[str, Any]) -> str:
    if not criteria:
        return "(anything)"
    parts = []
    for key, value in criteria.items():
        shown = getattr(value, "__name__", "<predicate>") if callable(value) else _short(value)
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def _listing(records: list[dict[str, Any]], criteria: dict[str, Any]) -> str:
    if not records:
        return "recorded: nothing (is the code under test calling a Langfuse client?)"
    lines = [f"recorded ({len(records)}):"]
    for r in records:
        line = f"  {r.get('type')} {r.get('name')!r} id={r.get('id')}"
        for field in ("input", "output", "value", "level", "status_message"):
            if field in r and r[field] is not None:
                line += f" {field}={_short(r[field])}"
        bad = _mismatches(r, criteria) if criteria else []
        if criteria and len(bad) < len(criteria):  # a near miss: say what differed
            diffs = ", ".join(
                f"{key}: got {_short(r.get(key, '<missing>'))}" for key in bad if key != "type"
            )
            if diffs:
                line += f"   <- differs in {diffs}"
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture
def langfuse_capture(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Capture]:
    """Capture everything any Langfuse client records during the test (see module docs)."""
    global _session
    if _session is not None:
        raise RuntimeError("langfuse_capture is already active (one capture at a time)")
    queue_dir = str(tmp_path_factory.mktemp("langfuse-capture") / "queue")
    for name, value in CAPTURE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANGFUSE_DQ_DIR", queue_dir)
    capture = Capture(queue_dir)
    default = _client_module._default
    _session = capture
    _client_module._on_new_client = capture._redirect
    try:
        for client in list(_client_module._instances):
            capture._redirect(client)
        yield capture
    finally:
        _client_module._on_new_client = None
        _session = None
        capture._restore_all()
        # A default client first built during the test was configured by the capture's
        # environment: forget it, so that get_client() after the test builds a real one.
        _client_module._default = default
