"""Any Python value in input/output/metadata is stored: converted, never an exception."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np
import pydantic
import pydantic.v1
import pytest

from helpers import journal_events
from langfuse_dq import Langfuse
from langfuse_dq.serialize import dumps, to_jsonable


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    y: float


class ModelV2(pydantic.BaseModel):
    name: str
    when: dt.datetime


class ModelV1(pydantic.v1.BaseModel):
    name: str


class Plain:
    def __init__(self) -> None:
        self.a = 1
        self.b = [1, 2]
        self._private = "hidden"


class Slotted:
    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x = 5


class HostileRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def _cycle() -> dict[str, object]:
    node: dict[str, object] = {"name": "root"}
    node["self"] = node
    return node


VALUES: dict[str, object] = {
    "datetime": dt.datetime(2026, 11, 26, 12, 30, 5, 123456, tzinfo=dt.timezone.utc),
    "naive_datetime": dt.datetime(2026, 1, 2, 3, 4, 5),
    "date": dt.date(2026, 11, 26),
    "time": dt.time(12, 30),
    "timedelta": dt.timedelta(seconds=90),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("1.25"),
    "decimal_int": decimal.Decimal("10"),
    "decimal_nan": decimal.Decimal("NaN"),
    "bytes_utf8": "héllo".encode(),
    "bytes_binary": b"\xff\x00\xfe",
    "enum": Color.RED,
    "int_enum": Level.HIGH,
    "set": {3, 1, 2},
    "frozenset": frozenset({"b", "a"}),
    "mixed_set": {1, "a"},
    "dataclass": Point(1, 2.5),
    "pydantic_v2": ModelV2(name="n", when=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)),
    "pydantic_v1": ModelV1(name="old"),
    "numpy_int": np.int64(7),
    "numpy_float": np.float32(0.5),
    "numpy_array": np.arange(3),
    "exception": ValueError("bad thing"),
    "object": Plain(),
    "slotted": Slotted(),
    "cycle": _cycle(),
    "nan": math.nan,
    "inf": math.inf,
    "neg_inf": -math.inf,
    "path": PurePosixPath("/tmp/x"),
    "complex": 1 + 2j,
    "tuple_keys": {(1, 2): "tuple key", 3: "int key", None: "none key"},
    "deep": None,
    "hostile": HostileRepr(),
    "generator": (i for i in range(3)),
    "class": Point,
}
deep: object = "leaf"
for _ in range(500):
    deep = [deep]
VALUES["deep"] = deep


@pytest.fixture
def lf(queue_dir: str) -> Iterator[Langfuse]:
    client = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
    )
    yield client
    client.shutdown()


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_kind_of_value_is_stored_in_input_output_and_metadata(
    lf: Langfuse, queue_dir: str, name: str
) -> None:
    value = VALUES[name]
    trace = lf.trace(name=name, input=value, metadata={"v": value})
    trace.span(name="s", input=value).end(output=value)
    events = journal_events(queue_dir)
    assert [e["type"] for e in events] == ["trace-create", "span-create", "span-update"]
    assert events[0]["body"]["name"] == name
    assert "input" in events[0]["body"] and "v" in events[0]["body"]["metadata"]
    assert "input" in events[1]["body"] and "output" in events[2]["body"]


def test_conversions_keep_meaning(lf: Langfuse, queue_dir: str) -> None:
    lf.trace(name="conversions", input=VALUES)
    stored = journal_events(queue_dir)[0]["body"]["input"]
    assert stored["datetime"] == "2026-11-26T12:30:05.123456Z"
    assert stored["date"] == "2026-11-26"
    assert stored["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert stored["decimal"] == 1.25 and stored["decimal_int"] == 10
    assert stored["bytes_utf8"] == "héllo"
    assert stored["bytes_binary"].startswith("base64:")
    assert stored["enum"] == "red" and stored["int_enum"] == 3
    assert stored["set"] == [1, 2, 3] and stored["frozenset"] == ["a", "b"]
    assert stored["dataclass"] == {"x": 1, "y": 2.5}
    assert stored["pydantic_v2"]["name"] == "n"
    assert stored["pydantic_v2"]["when"].startswith("2026-01-01T00:00:00")
    assert stored["pydantic_v1"] == {"name": "old"}
    assert stored["numpy_int"] == 7 and stored["numpy_float"] == 0.5
    assert stored["numpy_array"] == [0, 1, 2]
    assert stored["exception"] == "ValueError: bad thing"
    assert stored["object"]["a"] == 1 and "_private" not in stored["object"]
    assert stored["slotted"]["x"] == 5
    assert stored["cycle"]["self"] == "<cycle>"
    assert (stored["nan"], stored["inf"], stored["neg_inf"]) == ("NaN", "Infinity", "-Infinity")
    assert stored["tuple_keys"]["3"] == "int key"
    assert "hostile" in stored


def test_json_compatible_values_round_trip_unchanged() -> None:
    value = {"a": [1, 2.5, "x", None, True, {"b": {"c": []}}], "é": "ünïcode", "n": -(2**60)}
    assert json.loads(dumps(value)) == value
    assert to_jsonable(value) == value


def test_a_user_mask_failure_redacts_instead_of_leaking(queue_dir: str) -> None:
    def broken_mask(value: object) -> object:
        raise RuntimeError("mask bug")

    lf = Langfuse(
        public_key="pk",
        secret_key="sk",
        host="http://127.0.0.1:9",
        queue_dir=queue_dir,
        autospawn=False,
        mask=broken_mask,
    )
    lf.trace(name="t", input={"card": "4111-1111-1111-1111"})
    data = journal_events(queue_dir)[0]["body"]["input"]
    assert "4111" not in json.dumps(data)
    assert "masking failed" in data
    lf.shutdown()


def test_oversize_event_is_truncated_deterministically_with_a_marker(
    lf: Langfuse, queue_dir: str
) -> None:
    big = "x" * 3_000_000
    small = {"keep": "me"}
    lf.trace(name="big", input=big, output=small, metadata={"m": "y" * 10})
    lf.trace(name="big", input=big, output=small, metadata={"m": "y" * 10})
    first, second = journal_events(queue_dir)
    body = first["body"]
    assert body["input"].startswith("[truncated by langfuse-dq: input was 3000002 bytes of JSON")
    assert body["output"] == small
    assert len(json.dumps(first)) <= 1_000_000
    assert second["body"]["input"] == body["input"]
