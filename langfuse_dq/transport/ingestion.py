"""The legacy ingestion endpoint: scores always, everything else with ``transport="ingestion"``.

``POST /api/public/ingestion`` takes ``{"batch": [envelope, ...]}`` (no gzip; 4.5 MB limit)
and answers 207 with per-event results keyed by envelope id. Stored envelopes are sent
verbatim: same id (the server's dedup key), same timestamp, same body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..fastjson import fast_encode

INGESTION_PATH = "/api/public/ingestion"
#: Requests stay below this (the server refuses bodies over 4,718,592 bytes).
MAX_BATCH_BYTES = 3_500_000

_ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_encode = fast_encode(_ENC)


def wire_envelope(event: dict[str, Any]) -> dict[str, Any]:
    """The envelope as the server takes it: our ``_``-prefixed bookkeeping removed."""
    return {k: v for k, v in event.items() if not k.startswith("_")}


def envelope_text(event: dict[str, Any]) -> str:
    return _encode(wire_envelope(event))


def request_body(envelope_texts: list[str]) -> bytes:
    meta = _ENC.encode(
        {"sdk_name": "langfuse-dq", "sdk_version": __version__, "batch_size": len(envelope_texts)}
    )
    return ('{"batch":[' + ",".join(envelope_texts) + '],"metadata":' + meta + "}").encode("ascii")


@dataclass
class BatchResult:
    """Per-event outcome of a 2xx answer."""

    accepted: set[str] = field(default_factory=set)
    #: envelope id -> (status, message)
    rejected: dict[str, tuple[int, str]] = field(default_factory=dict)
    retry: set[str] = field(default_factory=set)


def parse_result(status: int, text: str, ids: list[str]) -> BatchResult:
    """Read a 2xx answer. Events the server does not mention are retried, never assumed sent."""
    result = BatchResult()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or ("successes" not in payload and "errors" not in payload):
        if status == 207:
            result.retry.update(ids)
        else:
            result.accepted.update(ids)
        return result
    known = set(ids)
    for item in payload.get("successes") or []:
        if isinstance(item, dict) and item.get("id") in known:
            result.accepted.add(str(item["id"]))
    for item in payload.get("errors") or []:
        if not isinstance(item, dict) or item.get("id") not in known:
            continue
        event_id = str(item["id"])
        code = item.get("status")
        code = int(code) if isinstance(code, (int, float)) else 400
        message = str(item.get("message") or item.get("error") or f"HTTP {code}")
        if isinstance(item.get("error"), (dict, list)):
            message = f"{message}: {json.dumps(item['error'])[:500]}"
        if code == 429 or code >= 500:
            result.retry.add(event_id)
        else:
            result.rejected[event_id] = (code, message)
        result.accepted.discard(event_id)
    for event_id in ids:
        if event_id not in result.accepted and event_id not in result.rejected:
            result.retry.add(event_id)
    return result
