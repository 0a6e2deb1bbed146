"""Column types: parse/render, widening, ingest validators, Parquet converters.

The properties tie the three together: every value the validator accepts
converts to something pyarrow stores in the column's Arrow type (so an
accepted write can never fail at commit time), and every widening keeps every
old value valid and unchanged.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckmesh.catalog.types import (
    ColumnType,
    TypeError_,
    arrow_type,
    can_widen,
    converter,
    is_identifier,
    parse_type,
    validator,
)
from tests.strategies import (
    SCALAR_KINDS,
    column_types,
    decimal_types,
    invalid_values_for,
    type_spellings,
    values_for,
    widenings,
)


def T(text: str) -> ColumnType:
    return parse_type(text)


def convert(t: ColumnType, value: Any) -> Any:
    conv = converter(t)
    return value if conv is None else conv(value)


# --- parse and render ----------------------------------------------------------


@given(column_types())
def test_render_then_parse_is_the_identity(t: ColumnType) -> None:
    assert parse_type(t.render()) == t
    assert parse_type(t.render()).render() == t.render()


@given(st.data())
def test_every_spelling_parses_to_the_same_type(data: st.DataObject) -> None:
    t = data.draw(column_types())
    spelled = data.draw(type_spellings(t))
    assert parse_type(spelled) == t
    assert parse_type(f"  {spelled}  ") == t


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("INT", "INTEGER"),
        ("int4", "INTEGER"),
        ("Integer", "INTEGER"),
        ("INT2", "SMALLINT"),
        ("int8", "BIGINT"),
        ("long", "BIGINT"),
        ("bool", "BOOLEAN"),
        ("REAL", "FLOAT"),
        ("float4", "FLOAT"),
        ("FLOAT8", "DOUBLE"),
        ("string", "VARCHAR"),
        ("TEXT", "VARCHAR"),
        ("timestamptz", "TIMESTAMPTZ"),
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"),
        ("timestamp   with\ttime zone", "TIMESTAMPTZ"),
        ("json", "JSON"),
        ("date", "DATE"),
        ("NUMERIC(10,2)", "DECIMAL(10,2)"),
        ("decimal( 38 , 0 )", "DECIMAL(38,0)"),
        ("DECIMAL(1,1)", "DECIMAL(1,1)"),
        ("LIST(INT)", "INTEGER[]"),
        ("int[][]", "INTEGER[][]"),
        ("list(list(text))", "VARCHAR[][]"),
        ("STRUCT(a INT)", 'STRUCT("a" INTEGER)'),
        ('struct("order" text, b int[])', 'STRUCT("order" VARCHAR, "b" INTEGER[])'),
        ("STRUCT(a STRUCT(b DECIMAL(5, 2)))[]", 'STRUCT("a" STRUCT("b" DECIMAL(5,2)))[]'),
        ("STRUCT(t TIMESTAMP WITH TIME ZONE)", 'STRUCT("t" TIMESTAMPTZ)'),
    ],
)
def test_aliases_render_canonically(text: str, canonical: str) -> None:
    assert parse_type(text).render() == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "VARCHAR(10)",
        "DECIMAL",
        "DECIMAL(10)",
        "DECIMAL(0,0)",
        "DECIMAL(39,2)",
        "DECIMAL(5,6)",
        "DECIMAL(-1,0)",
        "HUGEINT",
        "UUID",
        "MAP(INT, INT)",
        "INT[",
        "[]",
        "LIST()",
        "STRUCT()",
        "STRUCT(a)",
        "STRUCT(a INT, a INT)",
        "STRUCT(a INT, A VARCHAR)",  # DuckDB field names are case-insensitive
        "STRUCT(1a INT)",
        'STRUCT("a INT)',
        "STRUCT(a-b INT)",
        "STRUCT(a INT",
        "STRUCT(a INT))",
        "STRUCT(a UUID)",
        "INTEGER[] []x",
    ],
)
def test_bad_types_are_rejected(text: str) -> None:
    with pytest.raises(TypeError_):
        parse_type(text)


def test_type_errors_are_value_errors_naming_the_text() -> None:
    with pytest.raises(ValueError, match="UUID"):
        parse_type("UUID")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("orders", True),
        ("Orders_2", True),
        ("_private", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("", False),
        ("1abc", False),
        ("a-b", False),
        ("a b", False),
        ("orders\n", False),  # "$" in a plain re.match would accept this
        ("\norders", False),
        ("_dm_token", False),
        ("_DM_op", False),
        ("änderung", False),
        ('"quoted"', False),
    ],
)
def test_is_identifier(name: str, ok: bool) -> None:
    assert is_identifier(name) is ok


@given(st.text(max_size=70))
def test_is_identifier_matches_its_grammar(name: str) -> None:
    expected = (
        1 <= len(name) <= 63
        and (name[0].isascii() and (name[0].isalpha() or name[0] == "_"))
        and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
        and not name.lower().startswith("_dm_")
    )
    assert is_identifier(name) is expected


@pytest.fixture(scope="module")
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    try:
        yield con
    finally:
        con.close()


@settings(max_examples=150)
@given(t=column_types())
def test_duckdb_accepts_every_rendered_type(duck: duckdb.DuckDBPyConnection, t: ColumnType) -> None:
    """The canonical spelling is valid DuckDB (the query views CAST to it), and
    DuckDB's own spelling of it parses back to the same type."""
    (duck_type,) = duck.sql(f"SELECT CAST(NULL AS {t.render()}) AS x").types
    assert parse_type(str(duck_type)) == t


@pytest.mark.parametrize("field", ["order", "from", "select", "group", "limit", "default"])
def test_struct_fields_named_like_keywords_work_in_duckdb(
    duck: duckdb.DuckDBPyConnection, field: str
) -> None:
    t = parse_type(f"STRUCT({field} INTEGER, x VARCHAR)")
    assert t.render() == f'STRUCT("{field}" INTEGER, "x" VARCHAR)'
    rows = duck.execute(f"SELECT CAST({{'{field}': 1, 'x': 'a'}} AS {t.render()}) AS v").fetchall()
    assert rows == [({field: 1, "x": "a"},)]


# --- widening --------------------------------------------------------------------

_ALLOWED = {
    ("SMALLINT", "INTEGER"),
    ("SMALLINT", "BIGINT"),
    ("SMALLINT", "DOUBLE"),
    ("INTEGER", "BIGINT"),
    ("INTEGER", "DOUBLE"),
    ("FLOAT", "DOUBLE"),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(SCALAR_KINDS, SCALAR_KINDS)))
def test_can_widen_matrix_of_scalars(old: str, new: str) -> None:
    expected = old == new or (old, new) in _ALLOWED
    assert can_widen(ColumnType(old), ColumnType(new)) is expected


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("DECIMAL(10,2)", "DECIMAL(10,2)", True),
        ("DECIMAL(10,2)", "DECIMAL(12,2)", True),
        ("DECIMAL(10,2)", "DECIMAL(12,4)", True),
        ("DECIMAL(10,2)", "DECIMAL(38,2)", True),
        ("DECIMAL(10,2)", "DECIMAL(11,3)", True),  # same 8 integer digits, one more fraction
        ("DECIMAL(10,2)", "DECIMAL(10,3)", False),  # fewer integer digits
        ("DECIMAL(10,2)", "DECIMAL(9,2)", False),
        ("DECIMAL(10,2)", "DECIMAL(12,1)", False),  # fewer fraction digits
        ("DECIMAL(10,2)", "DOUBLE", False),
        ("INTEGER", "DECIMAL(38,0)", False),
        ("BIGINT", "DOUBLE", False),  # not exact above 2**53
        ("BIGINT", "INTEGER", False),
        ("DOUBLE", "FLOAT", False),
        ("INTEGER[]", "BIGINT[]", False),
        ("INTEGER[]", "INTEGER[]", True),
        ("STRUCT(a INT)", "STRUCT(a INT, b INT)", False),
        ("STRUCT(a INT)", "STRUCT(a INT)", True),
        ("VARCHAR", "JSON", False),
        ("TIMESTAMP", "TIMESTAMPTZ", False),
        ("DATE", "TIMESTAMP", False),
    ],
)
def test_can_widen_cases(old: str, new: str, ok: bool) -> None:
    assert can_widen(T(old), T(new)) is ok


@given(st.data())
def test_widening_keeps_every_old_value_valid_and_equal(data: st.DataObject) -> None:
    old = data.draw(
        st.one_of(decimal_types(), st.sampled_from([T("SMALLINT"), T("INTEGER"), T("FLOAT")]))
    )
    targets = widenings(old)
    if targets is None:
        return
    new = data.draw(targets)
    assert can_widen(old, new)
    value = data.draw(values_for(old))
    assert validator(old)(value) is None
    assert validator(new)(value) is None, (old, new, value)
    before, after = convert(old, value), convert(new, value)
    if before is None:
        before = value
    if after is None:
        after = value
    assert after == before


@given(old=decimal_types(), new=decimal_types())
def test_decimal_that_cannot_widen_loses_some_value(old: ColumnType, new: ColumnType) -> None:
    if can_widen(old, new):
        return
    ctx = decimal.Context(prec=100)
    largest = ctx.subtract(
        ctx.power(10, old.precision - old.scale), decimal.Decimal(1).scaleb(-old.scale)
    )
    smallest = decimal.Decimal(1).scaleb(-old.scale)
    lost = []
    for value in (str(largest), str(smallest)):
        if validator(new)(value) is not None or convert(new, value) != decimal.Decimal(value):
            lost.append(value)
    assert lost, (old, new)


# --- validators --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_text", "value", "ok"),
    [
        ("SMALLINT", 32767, True),
        ("SMALLINT", 32768, False),
        ("SMALLINT", -32768, True),
        ("SMALLINT", -32769, False),
        ("INTEGER", 2**31 - 1, True),
        ("INTEGER", 2**31, False),
        ("BIGINT", 2**63 - 1, True),
        ("BIGINT", -(2**63), True),
        ("BIGINT", 2**63, False),
        pytest.param("BIGINT", 10**400, False, id="BIGINT-10**400"),
        ("INTEGER", True, False),  # bool is not an int here
        ("INTEGER", 1.0, False),
        ("INTEGER", "1", False),
        ("BOOLEAN", True, True),
        ("BOOLEAN", 1, False),
        ("BOOLEAN", "true", False),
        ("DOUBLE", 1, True),
        ("DOUBLE", 1.5, True),
        ("DOUBLE", True, False),
        ("DOUBLE", "1.5", False),
        pytest.param("DOUBLE", 10**400, False, id="DOUBLE-10**400"),  # float() raised at commit
        pytest.param("DOUBLE", 2**1023, True, id="DOUBLE-2**1023"),
        ("FLOAT", 3.0e38, True),
        ("FLOAT", 1e39, False),  # would be stored as infinity
        ("FLOAT", -1e300, False),
        pytest.param("FLOAT", 2**200, False, id="FLOAT-2**200"),
        ("VARCHAR", "", True),
        ("VARCHAR", "héllo\x00", True),
        ("VARCHAR", 1, False),
        ("VARCHAR", ["a"], False),
        ("JSON", {"a": [1, None]}, True),
        ("JSON", "text", True),
        ("DECIMAL(4,2)", "99.99", True),
        ("DECIMAL(4,2)", 99.99, True),
        ("DECIMAL(4,2)", "99.994", True),  # rounds to 99.99
        ("DECIMAL(4,2)", "99.995", False),  # rounds to 100.00: does not fit
        ("DECIMAL(4,2)", 99.999, False),
        ("DECIMAL(4,2)", "100", False),
        ("DECIMAL(4,2)", "-99.99", True),
        ("DECIMAL(4,2)", 12, True),
        ("DECIMAL(4,2)", "1e1", True),
        ("DECIMAL(4,2)", "1e2", False),
        ("DECIMAL(4,2)", "NaN", False),
        ("DECIMAL(4,2)", "Infinity", False),
        ("DECIMAL(4,2)", "abc", False),
        ("DECIMAL(4,2)", "", False),
        ("DECIMAL(4,2)", True, False),
        ("DECIMAL(4,2)", [1], False),
        ("DECIMAL(38,0)", "9" * 38, True),  # abs() in a 28-digit context rounded this up
        ("DECIMAL(38,0)", "-" + "9" * 38, True),
        ("DECIMAL(38,0)", "1" + "0" * 38, False),
        ("DECIMAL(38,10)", "1234567890123456789012345678.1234567890", True),
        ("DECIMAL(38,38)", "0." + "9" * 38, True),
        ("DECIMAL(38,38)", "1", False),
        ("DATE", "2024-02-29", True),
        ("DATE", "2023-02-29", False),
        ("DATE", "2024-02-29T10:00:00", False),
        ("DATE", 20240229, False),
        ("TIMESTAMP", "2024-01-01T10:00:00", True),
        ("TIMESTAMP", "2024-01-01 10:00:00.123456", True),
        ("TIMESTAMP", "2024-01-01T10:00:00Z", True),
        ("TIMESTAMP", "2024-01-01T10:00:00+05:30", True),
        ("TIMESTAMP", "2024-01-01", True),
        ("TIMESTAMP", "2024-01-01T25:00:00", False),
        ("TIMESTAMP", "yesterday", False),
        ("TIMESTAMP", 1700000000, False),
        ("TIMESTAMP", "0001-01-01T00:00:00+01:00", False),  # before year 1 in UTC
        ("TIMESTAMPTZ", "9999-12-31T23:59:59-01:00", False),  # after year 9999 in UTC
        ("TIMESTAMPTZ", "9999-12-31T23:59:59", True),
        ("TIMESTAMPTZ", "2024-01-01T10:00:00+02:00", True),
        ("INTEGER[]", [1, None, 3], True),
        ("INTEGER[]", [], True),
        ("INTEGER[]", [1, "2"], False),
        ("INTEGER[]", [2**31], False),
        ("INTEGER[]", 1, False),
        ("INTEGER[]", {"a": 1}, False),
        ("INTEGER[][]", [[1], None, []], True),
        ("INTEGER[][]", [1], False),
        ("STRUCT(a INT, b VARCHAR)", {"a": 1}, True),
        ("STRUCT(a INT, b VARCHAR)", {}, True),
        ("STRUCT(a INT, b VARCHAR)", {"a": None, "b": "x"}, True),
        ("STRUCT(a INT, b VARCHAR)", {"a": "x"}, False),
        ("STRUCT(a INT, b VARCHAR)", {"c": 1}, False),
        ("STRUCT(a INT, b VARCHAR)", [1, "x"], False),
        ("STRUCT(a STRUCT(b DATE[]))", {"a": {"b": ["2024-01-01", None]}}, True),
        ("STRUCT(a STRUCT(b DATE[]))", {"a": {"b": ["2024-13-01"]}}, False),
    ],
)
def test_validator_cases(type_text: str, value: Any, ok: bool) -> None:
    reason = validator(T(type_text))(value)
    if ok:
        assert reason is None
    else:
        assert isinstance(reason, str)
        assert reason


def test_validator_reasons_locate_nested_errors() -> None:
    t = T("STRUCT(a STRUCT(b INTEGER[]))")
    assert validator(t)({"a": {"b": [1, 2, "x"]}}) == ".a: .b: [2]: expected INTEGER (an integer)"
    assert validator(t)({"z": 1}) == "unknown field 'z'"


def test_validator_reasons_stay_short_for_huge_numbers() -> None:
    reason = validator(T("BIGINT"))(10**400)
    assert reason is not None
    assert len(reason) < 100


@settings(max_examples=100)
@given(st.data())
def test_accepted_values_convert_to_their_arrow_type(data: st.DataObject) -> None:
    """Whatever ingest accepts, the coordinator can write: no accepted record is
    quarantined at commit time for a type reason."""
    t = data.draw(column_types())
    values = data.draw(st.lists(values_for(t), min_size=1, max_size=4))
    check = validator(t)
    for value in values:
        assert check(value) is None, (t.render(), value)
    converted = [convert(t, v) for v in values]
    array = pa.array([*converted, None], arrow_type(t))
    assert len(array) == len(values) + 1
    assert array.null_count >= 1


@settings(max_examples=60)
@given(st.data())
def test_invalid_values_are_rejected(data: st.DataObject) -> None:
    t = data.draw(column_types().filter(lambda t: t.kind != "JSON"))
    value = data.draw(invalid_values_for(t))
    reason = validator(t)(value)
    assert isinstance(reason, str), (t.render(), value)


@given(st.data())
def test_scalar_values_round_trip_through_arrow(data: st.DataObject) -> None:
    t = data.draw(
        st.sampled_from([T(k) for k in SCALAR_KINDS if k not in ("FLOAT",)]) | decimal_types()
    )
    value = data.draw(values_for(t))
    back = pa.array([convert(t, value)], arrow_type(t)).to_pylist()[0]
    if t.kind in ("SMALLINT", "INTEGER", "BIGINT", "BOOLEAN", "VARCHAR"):
        assert back == value
    elif t.kind == "DOUBLE":
        assert back == float(value)
    elif t.kind == "JSON":
        assert json.loads(back) == value
    elif t.kind == "DECIMAL":
        assert back == decimal.Decimal(str(value))
    elif t.kind == "DATE":
        assert back == dt.date.fromisoformat(value)
    elif t.kind == "TIMESTAMP":
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        assert back == parsed
    else:
        assert t.kind == "TIMESTAMPTZ"
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        assert back == parsed


@pytest.mark.parametrize(
    ("type_text", "value", "expected"),
    [
        ("DATE", "2024-02-29", dt.date(2024, 2, 29)),
        ("TIMESTAMP", "2024-01-01T10:00:00+02:00", dt.datetime(2024, 1, 1, 8, 0)),
        ("TIMESTAMP", "2024-01-01T10:00:00", dt.datetime(2024, 1, 1, 10, 0)),
        ("TIMESTAMPTZ", "2024-01-01T10:00:00", dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.UTC)),
        ("TIMESTAMPTZ", "2024-01-01T10:00:00-01:00", dt.datetime(2024, 1, 1, 11, tzinfo=dt.UTC)),
        ("DECIMAL(5,2)", 1.005, decimal.Decimal("1.00")),  # half-even, from str(1.005)
        ("DECIMAL(5,2)", "1.015", decimal.Decimal("1.02")),
        ("DECIMAL(5,2)", 7, decimal.Decimal("7.00")),
        ("DOUBLE", 3, 3.0),
        ("JSON", {"b": [1, 2], "a": None}, '{"b":[1,2],"a":null}'),
        ("INTEGER[]", [1, None], None),  # no conversion needed
        ("DATE[]", ["2024-01-01", None], [dt.date(2024, 1, 1), None]),
        ("STRUCT(a INT, d DATE)", {"d": "2024-01-01"}, {"d": dt.date(2024, 1, 1)}),
        ("STRUCT(a INT, b VARCHAR)", {"a": 1}, None),
    ],
)
def test_converter_cases(type_text: str, value: Any, expected: Any) -> None:
    conv = converter(T(type_text))
    if expected is None:
        assert conv is None
    else:
        assert conv is not None
        assert conv(value) == expected


def test_decimal_38_converts_without_context_overflow() -> None:
    t = T("DECIMAL(38,10)")
    value = "1234567890123456789012345678.1234567890"
    assert validator(t)(value) is None
    array = pa.array([convert(t, value)], arrow_type(t))
    assert str(array[0].as_py()) == value


@pytest.mark.parametrize(
    ("type_text", "arrow"),
    [
        ("BOOLEAN", pa.bool_()),
        ("SMALLINT", pa.int16()),
        ("INTEGER", pa.int32()),
        ("BIGINT", pa.int64()),
        ("FLOAT", pa.float32()),
        ("DOUBLE", pa.float64()),
        ("VARCHAR", pa.string()),
        ("JSON", pa.string()),
        ("DATE", pa.date32()),
        ("TIMESTAMP", pa.timestamp("us")),
        ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
        ("DECIMAL(12,3)", pa.decimal128(12, 3)),
        ("INTEGER[]", pa.list_(pa.int32())),
        ("STRUCT(a INT, b DATE[])", pa.struct([("a", pa.int32()), ("b", pa.list_(pa.date32()))])),
    ],
)
def test_arrow_types(type_text: str, arrow: pa.DataType) -> None:
    assert arrow_type(T(type_text)) == arrow


@pytest.mark.parametrize(
    ("type_text", "value", "reason"),
    [
        ("DOUBLE", math.nan, "nan is not a finite number"),
        ("DOUBLE", -math.inf, "-inf is not a finite number"),
        ("FLOAT", math.inf, "inf is not a finite number"),
        ("DOUBLE[]", [1.0, math.nan], "[1]: nan is not a finite number"),
        ("JSON", {"a": [1, math.inf]}, "inf is not a finite number"),
        ("JSON", {"\ud800": 1}, "contains a lone surrogate (not valid Unicode)"),
        ("JSON", ["ok", "x\udfff"], "contains a lone surrogate (not valid Unicode)"),
        ("VARCHAR", "a\ud800", "contains a lone surrogate (not valid Unicode)"),
        ("STRUCT(s VARCHAR)", {"s": "\udc00"}, ".s: contains a lone surrogate (not valid Unicode)"),
        ("TIMESTAMP", "0001-01-01T00:00:00+05:00", "outside the TIMESTAMP range"),
        ("TIMESTAMPTZ", "9999-12-31T23:59:59-05:00", "outside the TIMESTAMPTZ range"),
    ],
)
def test_values_nothing_could_store_or_read_back_are_refused(
    type_text: str, value: Any, reason: str
) -> None:
    """NaN, infinities and lone surrogates cannot be JSON, UTF-8 or read back
    equal; instants past the ends of the range cannot be held in UTC."""
    got = validator(T(type_text))(value)
    assert got is not None
    assert got.endswith(reason), got


@pytest.mark.parametrize(
    ("type_text", "value"),
    [
        ("VARCHAR", "a\x00b\uffff\U0010ffff"),
        ("JSON", {"a": [10**30, -0.0, 5e-324, "\x00"]}),
        ("TIMESTAMPTZ", "0001-01-01T00:00:00-05:00"),
        ("TIMESTAMP", "9999-12-31T23:59:59.999999"),
    ],
)
def test_odd_values_that_commit_are_accepted(type_text: str, value: Any) -> None:
    assert validator(T(type_text))(value) is None
