"""Result conversion to JSON-ready values, for the types that are awkward in JSON."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb
import pytest

from duckmesh.query._convert import column_plan, convert_column, iso_duration, jsonify


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "PT0S"),
        (dt.timedelta(days=91), "P91D"),
        (dt.timedelta(hours=1, minutes=2, seconds=3, microseconds=500_000), "PT1H2M3.5S"),
        (-dt.timedelta(days=1, seconds=3), "-P1DT3S"),
    ],
)
def test_iso_duration(delta: dt.timedelta, text: str) -> None:
    assert iso_duration(delta) == text


def test_jsonify_fallback_handles_every_python_type() -> None:
    value = {
        1: [Decimal("1.10"), float("nan"), b"\x00", dt.date(2024, 1, 2)],
        "t": dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "u": (1, "x"),
    }
    assert jsonify(value) == {
        "1": ["1.10", None, "AA==", "2024-01-02"],
        "t": "2024-01-02T01:00:00Z",
        "u": [1, "x"],
    }


def test_union_and_nested_columns_convert_by_type() -> None:
    conn = duckdb.connect(":memory:")
    try:
        cursor = conn.execute(
            "SELECT union_value(k := 1.5::DECIMAL(3,1)) AS un, "
            "MAP {'a': [TIMESTAMPTZ '2024-01-01 00:00:00+00']} AS m, "
            "[{'x': 'nan'::DOUBLE}] AS l, 'infinity'::DATE AS d"
        )
        description = cursor.description or []
        row = cursor.fetchone()
        assert row is not None
    finally:
        conn.close()
    out = []
    for (_, duck_type, *_), value in zip(description, row, strict=True):
        plan = column_plan(duck_type)
        column = [value] if plan.convert is None else convert_column([value], plan.convert)
        assert plan.size(column) > 0
        out.append(column[0])
    assert out == ["1.5", {"a": ["2024-01-01T00:00:00Z"]}, [{"x": None}], "9999-12-31"]
    json.dumps(out, allow_nan=False)
