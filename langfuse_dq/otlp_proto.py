"""A small decoder of OTLP/protobuf trace exports into OTLP/JSON form, without dependencies.

The dev server uses it to accept what the official SDKs send (``application/x-protobuf``).
It reads ``ExportTraceServiceRequest`` as defined by opentelemetry-proto (trace/v1,
common/v1, resource/v1) and yields the same structure OTLP/JSON would carry: ids as lowercase
hex, 64-bit integers as decimal strings, enums as integers. Unknown fields are skipped.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class DecodeError(ValueError):
    """The bytes are not a valid protobuf message of the expected shape."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of every field of a message."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _I64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            value = data[pos : pos + 8]
            pos += 8
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise DecodeError("truncated length-delimited field")
            value = data[pos : pos + length]
            pos += length
        elif wire == _I32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value = data[pos : pos + 4]
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _any_value(data: bytes) -> dict[str, Any]:
    for number, _wire, value in _fields(data):
        if number == 1:
            return {"stringValue": value.decode("utf-8", "replace")}
        if number == 2:
            return {"boolValue": bool(value)}
        if number == 3:
            return {"intValue": str(_signed64(value))}
        if number == 4:
            return {"doubleValue": struct.unpack("<d", value)[0]}
        if number == 5:
            return {
                "arrayValue": {"values": [_any_value(v) for n, _, v in _fields(value) if n == 1]}
            }
        if number == 6:
            return {
                "kvlistValue": {"values": [_key_value(v) for n, _, v in _fields(value) if n == 1]}
            }
        if number == 7:
            return {"bytesValue": value.hex()}
    return {}


def _key_value(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {"key": "", "value": {}}
    for number, _wire, value in _fields(data):
        if number == 1:
            out["key"] = value.decode("utf-8", "replace")
        elif number == 2:
            out["value"] = _any_value(value)
    return out


def _attributes(fields: list[tuple[int, int, Any]], number: int) -> list[dict[str, Any]]:
    return [_key_value(v) for n, _, v in fields if n == number]


def _status(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, _wire, value in _fields(data):
        if number == 2:
            out["message"] = value.decode("utf-8", "replace")
        elif number == 3:
            out["code"] = value
    return out


def _event(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    out: dict[str, Any] = {"attributes": _attributes(fields, 3)}
    for number, _wire, value in fields:
        if number == 1:
            out["timeUnixNano"] = str(struct.unpack("<Q", value)[0])
        elif number == 2:
            out["name"] = value.decode("utf-8", "replace")
    return out


def _span(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    out: dict[str, Any] = {}
    for number, _wire, value in fields:
        if number == 1:
            out["traceId"] = value.hex()
        elif number == 2:
            out["spanId"] = value.hex()
        elif number == 3:
            out["traceState"] = value.decode("utf-8", "replace")
        elif number == 4 and value:
            out["parentSpanId"] = value.hex()
        elif number == 5:
            out["name"] = value.decode("utf-8", "replace")
        elif number == 6:
            out["kind"] = value
        elif number == 7:
            out["startTimeUnixNano"] = str(struct.unpack("<Q", value)[0])
        elif number == 8:
            out["endTimeUnixNano"] = str(struct.unpack("<Q", value)[0])
        elif number == 15:
            out["status"] = _status(value)
        elif number == 16:
            out["flags"] = struct.unpack("<I", value)[0]
    out["attributes"] = _attributes(fields, 9)
    events = [_event(v) for n, _, v in fields if n == 11]
    if events:
        out["events"] = events
    return out


def _scope(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    out: dict[str, Any] = {}
    for number, _wire, value in fields:
        if number == 1:
            out["name"] = value.decode("utf-8", "replace")
        elif number == 2:
            out["version"] = value.decode("utf-8", "replace")
    out["attributes"] = _attributes(fields, 3)
    return out


def _each(
    fields: list[tuple[int, int, Any]], number: int, parse: Callable[[bytes], Any]
) -> list[Any]:
    return [parse(v) for n, w, v in fields if n == number and w == _LEN]


def _scope_spans(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    out: dict[str, Any] = {"scope": {}, "spans": _each(fields, 2, _span)}
    for number, _wire, value in fields:
        if number == 1:
            out["scope"] = _scope(value)
    return out


def _resource_spans(data: bytes) -> dict[str, Any]:
    fields = _fields(data)
    out: dict[str, Any] = {
        "resource": {"attributes": []},
        "scopeSpans": _each(fields, 2, _scope_spans),
    }
    for number, _wire, value in fields:
        if number == 1:
            out["resource"] = {"attributes": _attributes(_fields(value), 1)}
    return out


def decode_export_request(data: bytes) -> dict[str, Any]:
    """``ExportTraceServiceRequest`` bytes -> ``{"resourceSpans": [...]}`` (OTLP/JSON shape)."""
    return {"resourceSpans": _each(_fields(data), 1, _resource_spans)}
