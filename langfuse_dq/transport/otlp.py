"""OTLP/JSON encoding of assembled observations, the way Langfuse v4 reads them (WIRE §3-4).

We hand-build OTLP/JSON rather than protobuf: no extra dependency, ``json.dumps`` runs in C,
and once gzip-compressed (the official SDK compresses its protobuf too) the repeated keys and
hex ids cost little. Ids are lowercase hex strings (not base64), enums are integers, 64-bit
timestamps are decimal strings, attribute values are ``stringValue``/``boolValue``/
``intValue``/``doubleValue``/``arrayValue`` only (the server mangles ``kvlistValue`` and
``bytesValue``), and small integers go as JSON numbers because the server's JSON path reads a
string ``intValue`` as an object.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from .. import __version__
from ..assemble import SpanData

OTLP_PATH = "/api/public/otel/v1/traces"
SCOPE_NAME = "langfuse-sdk"  # the server treats scopes starting with this as SDK spans
SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2
GENERATION_LIKE = ("generation", "embedding")

_ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _text(value: Any) -> str:
    """A ``str`` as it is, anything else as compact JSON text."""
    if isinstance(value, str):
        return value
    try:
        return _ENC.encode(value)
    except (TypeError, ValueError):
        return json.dumps(value, default=str)


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        if -(2**53) < value < 2**53:
            return {"intValue": value}
        return {"stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [{"stringValue": str(v)} for v in value]}}
    return {"stringValue": _text(value)}


class _Attrs:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, key: str, value: Any) -> None:
        if value is None:
            return
        self.items.append({"key": key, "value": _value(value)})

    def text(self, key: str, value: Any) -> None:
        if value is None:
            return
        self.items.append({"key": key, "value": {"stringValue": _text(value)}})

    def metadata(self, prefix: str, metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        for key, value in metadata.items():
            self.text(f"{prefix}.{key}", value)


def span_attributes(span: SpanData) -> list[dict[str, Any]]:
    """The Langfuse attributes of one span (WIRE §3), trace-level ones included."""
    f = span.fields
    tf = span.trace_fields
    a = _Attrs()
    # trace-level, on every span
    a.put("langfuse.trace.name", tf.get("name"))
    a.put("user.id", tf.get("userId"))
    a.put("session.id", tf.get("sessionId"))
    tags = tf.get("tags")
    if isinstance(tags, list) and tags:
        a.put("langfuse.trace.tags", [str(t) for t in tags])
    if isinstance(tf.get("public"), bool):
        a.put("langfuse.trace.public", tf["public"])
    a.metadata("langfuse.trace.metadata", tf.get("metadata"))
    a.put("langfuse.version", f.get("version") or tf.get("version"))
    a.put("langfuse.release", tf.get("release") or f.get("_release"))
    a.put("langfuse.environment", f.get("environment") or tf.get("environment"))
    # the observation
    a.put("langfuse.observation.type", span.kind)
    a.text("langfuse.observation.input", f.get("input"))
    a.text("langfuse.observation.output", f.get("output"))
    a.metadata("langfuse.observation.metadata", f.get("metadata"))
    level = f.get("level")
    message = f.get("statusMessage")
    if span.warning:
        if level != "ERROR":
            level = "WARNING"
        message = f"{message} | {span.warning}" if message else span.warning
    if level and level != "DEFAULT":
        a.put("langfuse.observation.level", level)
    a.put("langfuse.observation.status_message", message)
    if span.kind in GENERATION_LIKE or any(
        k in f for k in ("model", "usageDetails", "costDetails")
    ):
        a.put("langfuse.observation.model.name", f.get("model"))
        if f.get("modelParameters") is not None:
            a.text("langfuse.observation.model.parameters", f["modelParameters"])
        if f.get("usageDetails"):
            a.text("langfuse.observation.usage_details", f["usageDetails"])
        if f.get("costDetails"):
            a.text("langfuse.observation.cost_details", f["costDetails"])
        a.put("langfuse.observation.completion_start_time", f.get("completionStartTime"))
        if span.kind in GENERATION_LIKE:
            a.put("langfuse.observation.prompt.name", f.get("promptName"))
            if isinstance(f.get("promptVersion"), int):
                a.put("langfuse.observation.prompt.version", f["promptVersion"])
    return a.items


def span_json(span: SpanData) -> dict[str, Any]:
    """One OTLP/JSON span."""
    out: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
    }
    if span.parent_id:
        out["parentSpanId"] = span.parent_id
    out["name"] = span.name
    out["kind"] = SPAN_KIND_INTERNAL
    out["startTimeUnixNano"] = str(span.start_ns)
    out["endTimeUnixNano"] = str(span.end_ns)
    out["attributes"] = span_attributes(span)
    if span.fields.get("level") == "ERROR":
        status: dict[str, Any] = {"code": STATUS_ERROR}
        if span.fields.get("statusMessage"):
            status["message"] = str(span.fields["statusMessage"])
        out["status"] = status
    else:
        out["status"] = {}
    return out


def encode_span(span: SpanData) -> str:
    """The JSON text of one span (requests are assembled from these, see :func:`request_body`)."""
    return _ENC.encode(span_json(span))


def _resource(public_key: Optional[str]) -> tuple[str, str]:
    service = os.environ.get("OTEL_SERVICE_NAME") or "unknown_service:python"
    resource = {
        "attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "telemetry.sdk.language", "value": {"stringValue": "python"}},
            {"key": "telemetry.sdk.name", "value": {"stringValue": "langfuse-dq"}},
            {"key": "telemetry.sdk.version", "value": {"stringValue": __version__}},
        ]
    }
    scope: dict[str, Any] = {"name": SCOPE_NAME, "version": __version__}
    if public_key:
        scope["attributes"] = [{"key": "public_key", "value": {"stringValue": public_key}}]
    return _ENC.encode(resource), _ENC.encode(scope)


class OtlpEncoder:
    """Builds request bodies from encoded spans; knows the envelope's size."""

    def __init__(self, public_key: Optional[str]) -> None:
        resource, scope = _resource(public_key)
        self._head = (
            '{"resourceSpans":[{"resource":'
            + resource
            + ',"scopeSpans":[{"scope":'
            + scope
            + ',"spans":['
        )
        self._tail = "]}]}]}"
        self.overhead = len(self._head) + len(self._tail)

    def request_body(self, span_texts: list[str]) -> bytes:
        """An ``ExportTraceServiceRequest`` in OTLP/JSON."""
        return (self._head + ",".join(span_texts) + self._tail).encode("ascii")
