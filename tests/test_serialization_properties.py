"""Property tests of serialization: any value encodes; JSON-able values round-trip unchanged."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any, Optional

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from langfuse_dq.serialize import MAX_DEPTH, dumps, to_jsonable, truncate_body

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


class Mood(enum.Enum):
    HAPPY = 1
    SAD = "sad"


@dataclasses.dataclass
class Record:
    name: str
    when: dt.datetime
    tags: list[str]
    parent: Optional[Record] = None


ANY_SCALARS = (
    JSON_SCALARS
    | st.floats()
    | st.binary(max_size=50)
    | st.uuids()
    | st.decimals(allow_nan=True)
    | st.datetimes(timezones=st.none() | st.just(dt.timezone.utc))
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.sampled_from(list(Mood))
    | st.complex_numbers(allow_nan=True)
    | st.from_type(Record)
    | st.builds(ValueError, st.text(max_size=20))
)
ANY_VALUES = st.recursive(
    ANY_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text(max_size=5), max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | st.booleans() | st.none(), children, max_size=4
        )
    ),
    max_leaves=30,
)


def _no_constants(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_VALUES)
def test_any_value_serializes_to_json_without_an_exception(value: Any) -> None:
    text = dumps(value)
    parsed = json.loads(text, parse_constant=_no_constants)  # strict JSON: no NaN/Infinity
    # to_jsonable cuts nesting at MAX_DEPTH (deep Record chains reach it); dumps only falls
    # back to it when the encoder fails, so the two agree below that depth.
    assume(_nesting(parsed) < MAX_DEPTH)
    assert json.loads(dumps(to_jsonable(value))) == parsed


def test_to_jsonable_cuts_deep_values_at_the_json_depth_dumps_would_have() -> None:
    chain: Optional[Record] = None
    for i in range(MAX_DEPTH - 1):  # each Record is one level of JSON nesting
        chain = Record(f"r{i}", dt.datetime(2026, 1, 1), ["t"], chain)
    assert json.loads(dumps(to_jsonable(chain))) == json.loads(dumps(chain))
    deeper = Record("top", dt.datetime(2026, 1, 1), [], chain)
    deeper = Record("top2", dt.datetime(2026, 1, 1), [], deeper)
    assert "<max depth exceeded>" in dumps(to_jsonable(deeper))


def _nesting(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_json_compatible_values_round_trip_unchanged(value: Any) -> None:
    assert json.loads(dumps(value)) == value
    assert to_jsonable(value) == value


@settings(max_examples=100, deadline=None)
@given(st.lists(ANY_VALUES, min_size=1, max_size=3))
def test_cycles_anywhere_become_markers(values: list[Any]) -> None:
    holder: dict[str, Any] = {"values": values}
    holder["me"] = holder
    values.append(holder)
    parsed = json.loads(dumps(holder))
    assert parsed["me"] == "<cycle>"


@settings(max_examples=100, deadline=None)
@given(
    st.text(min_size=0, max_size=3000),
    st.text(max_size=3000),
    st.integers(min_value=300, max_value=4000),
)
def test_truncation_fits_the_limit_and_is_deterministic(big: str, other: str, limit: int) -> None:
    def make() -> dict[str, Any]:
        return {"input": big, "output": other, "metadata": {"k": "v"}}

    first, second = make(), make()
    truncate_body(first, lambda: len(dumps(first)), limit)
    truncate_body(second, lambda: len(dumps(second)), limit)
    assert first == second
    if len(dumps(make())) <= limit:
        assert first == make()
    else:
        changed = [k for k in first if first[k] != make()[k]]
        assert all(str(first[k]).startswith("[truncated by langfuse-dq") for k in changed)


def test_special_values_have_stable_forms() -> None:
    assert json.loads(dumps({"u": uuid.UUID(int=1), "d": decimal.Decimal("2.50")})) == {
        "u": "00000000-0000-0000-0000-000000000001",
        "d": 2.5,
    }
