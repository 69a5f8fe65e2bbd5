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
import math
import os
from json.encoder import encode_basestring_ascii

try:
    from _json import make_encoder as c_make_encoder
except ImportError:  # pragma: no cover - CPython always has it
    c_make_encoder = None  # type: ignore[assignment,misc]
from typing import Any, Optional

from .. import __version__
from ..assemble import SpanData

OTLP_PATH = "/api/public/otel/v1/traces"
SCOPE_NAME = "langfuse-sdk"  # the server treats scopes starting with this as SDK spans
SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2
GENERATION_LIKE = ("generation", "embedding")

_ENC = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_quote = encode_basestring_ascii
# One C encoder, built once: json.dumps builds a new one on every call, which dominates the
# cost of encoding the many small values of a span. Values here are already JSON-safe (they
# were sanitised at enqueue), so no circularity check is needed.
_c_encode = (
    c_make_encoder(None, str, _quote, None, ":", ",", False, False, False)
    if c_make_encoder is not None
    else None
)


def _json(value: Any) -> str:
    """Compact JSON text of an already JSON-safe value."""
    if _c_encode is not None:
        try:
            return "".join(_c_encode(value, 0))
        except (TypeError, ValueError):
            pass
    return json.dumps(value, separators=(",", ":"), default=str)


def _text(value: Any) -> str:
    """A ``str`` as it is, anything else as compact JSON text."""
    return value if isinstance(value, str) else _json(value)


class _Attrs:
    """Builds the JSON text of an OTLP attribute list, one ``{"key":..,"value":..}`` at a time."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []

    def _add(self, key: str, value_json: str) -> None:
        self.parts.append('{"key":' + _quote(key) + ',"value":' + value_json + "}")

    def put(self, key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            self._add(key, '{"boolValue":true}' if value else '{"boolValue":false}')
        elif isinstance(value, int) and -(2**53) < value < 2**53:
            self._add(key, '{"intValue":' + str(value) + "}")
        elif isinstance(value, float) and math.isfinite(value):
            self._add(key, '{"doubleValue":' + repr(value) + "}")
        elif isinstance(value, (list, tuple)):
            items = ",".join('{"stringValue":' + _quote(str(v)) + "}" for v in value)
            self._add(key, '{"arrayValue":{"values":[' + items + "]}}")
        else:
            self.text(key, value)

    def text(self, key: str, value: Any) -> None:
        if value is None:
            return
        self._add(key, '{"stringValue":' + _quote(_text(value)) + "}")

    def metadata(self, prefix: str, metadata: Any) -> None:
        if metadata is None:
            return
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        for key, value in metadata.items():
            self.text(f"{prefix}.{key}", value)

    def json(self) -> str:
        return ",".join(self.parts)


def trace_attributes(trace_fields: dict[str, Any]) -> str:
    """Trace-level attributes, the same on every span of a trace (WIRE §3), as JSON items."""
    tf = trace_fields
    a = _Attrs()
    a.put("langfuse.trace.name", tf.get("name"))
    a.put("user.id", tf.get("userId"))
    a.put("session.id", tf.get("sessionId"))
    tags = tf.get("tags")
    if isinstance(tags, list) and tags:
        a.put("langfuse.trace.tags", [str(t) for t in tags])
    if isinstance(tf.get("public"), bool):
        a.put("langfuse.trace.public", tf["public"])
    a.metadata("langfuse.trace.metadata", tf.get("metadata"))
    return a.json()


def _key(name: str) -> str:
    """The constant head of one attribute item: ``{"key":"<name>","value":``."""
    return '{"key":' + _quote(name) + ',"value":'


def _any_value(value: Any) -> str:
    """The ``AnyValue`` JSON of a value that is not None, exactly as ``_Attrs.put`` makes it."""
    if isinstance(value, str):
        return '{"stringValue":' + _quote(value) + "}"
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return '{"intValue":' + str(value) + "}"
    if isinstance(value, float) and math.isfinite(value):
        return '{"doubleValue":' + repr(value) + "}"
    if isinstance(value, (list, tuple)):
        items = ",".join('{"stringValue":' + _quote(str(v)) + "}" for v in value)
        return '{"arrayValue":{"values":[' + items + "]}}"
    return '{"stringValue":' + _quote(_json(value)) + "}"


def _string_value(value: Any) -> str:
    """The ``stringValue`` JSON of a value that is not None (``_Attrs.text``)."""
    return '{"stringValue":' + _quote(value if isinstance(value, str) else _json(value)) + "}"


_K_VERSION = _key("langfuse.version")
_K_RELEASE = _key("langfuse.release")
_K_ENVIRONMENT = _key("langfuse.environment")
_K_INPUT = _key("langfuse.observation.input")
_K_OUTPUT = _key("langfuse.observation.output")
_K_LEVEL = _key("langfuse.observation.level")
_K_STATUS_MESSAGE = _key("langfuse.observation.status_message")
_K_MODEL = _key("langfuse.observation.model.name")
_K_MODEL_PARAMETERS = _key("langfuse.observation.model.parameters")
_K_USAGE = _key("langfuse.observation.usage_details")
_K_COST = _key("langfuse.observation.cost_details")
_K_COMPLETION_START = _key("langfuse.observation.completion_start_time")
_K_PROMPT_NAME = _key("langfuse.observation.prompt.name")
_K_PROMPT_VERSION = _key("langfuse.observation.prompt.version")
_TYPE_ITEMS = {
    kind: _key("langfuse.observation.type") + _any_value(kind) + "}"
    for kind in ("span", "generation", "event", *GENERATION_LIKE)
}
_METADATA_PREFIX = "langfuse.observation.metadata."


_SV = '{"stringValue":'
#: ``{"key":"<name>","value":{"stringValue":`` heads: a str value is then quoted and closed
#: with ``}}`` (the text ``_any_value``/``_string_value`` give for a str, built in fewer steps)
_S_VERSION = _K_VERSION + _SV
_S_RELEASE = _K_RELEASE + _SV
_S_ENVIRONMENT = _K_ENVIRONMENT + _SV
_S_INPUT = _K_INPUT + _SV
_S_OUTPUT = _K_OUTPUT + _SV
_S_LEVEL = _K_LEVEL + _SV
_S_STATUS_MESSAGE = _K_STATUS_MESSAGE + _SV
_S_MODEL = _K_MODEL + _SV
_S_MODEL_PARAMETERS = _K_MODEL_PARAMETERS + _SV
_S_USAGE = _K_USAGE + _SV
_S_COST = _K_COST + _SV


def observation_attributes(span: SpanData) -> str:
    """The attributes of the observation itself (WIRE §3), as JSON items.

    The hot path of encoding: attribute heads are constants, values are encoded inline
    (the same text ``_Attrs`` produces, which :func:`trace_attributes` still uses); str
    values, by far the most common, skip ``_any_value``.
    """
    f = span.fields
    tf = span.trace_fields
    get = f.get
    quote = _quote
    parts: list[str] = []
    add = parts.append
    value = get("version") or tf.get("version")
    if value is not None:
        if isinstance(value, str):
            add(_S_VERSION + quote(value) + "}}")
        else:
            add(_K_VERSION + _any_value(value) + "}")
    value = tf.get("release") or get("_release")
    if value is not None:
        if isinstance(value, str):
            add(_S_RELEASE + quote(value) + "}}")
        else:
            add(_K_RELEASE + _any_value(value) + "}")
    value = get("environment") or tf.get("environment")
    if value is not None:
        if isinstance(value, str):
            add(_S_ENVIRONMENT + quote(value) + "}}")
        else:
            add(_K_ENVIRONMENT + _any_value(value) + "}")
    kind = span.kind
    type_item = _TYPE_ITEMS.get(kind)
    add(type_item or _key("langfuse.observation.type") + _any_value(kind) + "}")
    value = get("input")
    if value is not None:
        add(_S_INPUT + quote(value if isinstance(value, str) else _json(value)) + "}}")
    value = get("output")
    if value is not None:
        add(_S_OUTPUT + quote(value if isinstance(value, str) else _json(value)) + "}}")
    metadata = get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        for key, value in metadata.items():
            if value is not None:
                add(_key(f"{_METADATA_PREFIX}{key}") + _string_value(value) + "}")
    level = get("level")
    message = get("statusMessage")
    if span.warning:
        if level != "ERROR":
            level = "WARNING"
        message = f"{message} | {span.warning}" if message else span.warning
    if level and level != "DEFAULT":
        if isinstance(level, str):
            add(_S_LEVEL + quote(level) + "}}")
        else:
            add(_K_LEVEL + _any_value(level) + "}")
    if message is not None:
        if isinstance(message, str):
            add(_S_STATUS_MESSAGE + quote(message) + "}}")
        else:
            add(_K_STATUS_MESSAGE + _any_value(message) + "}")
    generation_like = kind in GENERATION_LIKE
    if generation_like or "model" in f or "usageDetails" in f or "costDetails" in f:
        value = get("model")
        if value is not None:
            if isinstance(value, str):
                add(_S_MODEL + quote(value) + "}}")
            else:
                add(_K_MODEL + _any_value(value) + "}")
        value = get("modelParameters")
        if value is not None:
            add(
                _S_MODEL_PARAMETERS
                + quote(value if isinstance(value, str) else _json(value))
                + "}}"
            )
        value = get("usageDetails")
        if value:
            add(_S_USAGE + quote(value if isinstance(value, str) else _json(value)) + "}}")
        value = get("costDetails")
        if value:
            add(_S_COST + quote(value if isinstance(value, str) else _json(value)) + "}}")
        value = get("completionStartTime")
        if value is not None:
            add(_K_COMPLETION_START + _any_value(value) + "}")
        if generation_like:
            value = get("promptName")
            if value is not None:
                add(_K_PROMPT_NAME + _any_value(value) + "}")
            value = get("promptVersion")
            if isinstance(value, int):
                add(_K_PROMPT_VERSION + _any_value(value) + "}")
    return ",".join(parts)


def _status(span: SpanData) -> str:
    if span.fields.get("level") == "ERROR":
        message = span.fields.get("statusMessage")
        if message:
            return '{"code":' + str(STATUS_ERROR) + ',"message":' + _quote(str(message)) + "}"
        return '{"code":' + str(STATUS_ERROR) + "}"
    return "{}"


class SpanEncoder:
    """Encodes spans to OTLP/JSON text, reusing the trace-level part across a trace's spans."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[dict[str, Any], str]] = {}

    def _trace_part(self, trace_fields: dict[str, Any]) -> str:
        key = id(trace_fields)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is trace_fields:
            return hit[1]
        text = trace_attributes(trace_fields)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[key] = (trace_fields, text)
        return text

    def encode(self, span: SpanData) -> str:
        trace_fields = span.trace_fields
        hit = self._cache.get(id(trace_fields))
        if hit is not None and hit[0] is trace_fields:
            trace_part = hit[1]
        else:
            trace_part = self._trace_part(trace_fields)
        obs_part = observation_attributes(span)
        joined = f"{trace_part},{obs_part}" if trace_part and obs_part else trace_part or obs_part
        parent = f'"parentSpanId":"{span.parent_id}",' if span.parent_id else ""
        status = _status(span) if span.fields.get("level") == "ERROR" else "{}"
        return (
            f'{{"traceId":"{span.trace_id}","spanId":"{span.span_id}",{parent}'
            f'"name":{_quote(span.name)},"kind":{SPAN_KIND_INTERNAL},'
            f'"startTimeUnixNano":"{span.start_ns}","endTimeUnixNano":"{span.end_ns}",'
            f'"attributes":[{joined}],"status":{status}}}'
        )


_DEFAULT_ENCODER = SpanEncoder()


def encode_span(span: SpanData) -> str:
    """The JSON text of one span (requests are assembled from these, see ``OtlpEncoder``)."""
    return _DEFAULT_ENCODER.encode(span)


def span_json(span: SpanData) -> dict[str, Any]:
    """One OTLP/JSON span as a dict (for inspection and tests)."""
    value: dict[str, Any] = json.loads(encode_span(span))
    return value


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
