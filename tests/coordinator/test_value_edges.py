"""Every value ingest validation accepts commits and reads back equal.

Hypothesis draws records with values at and beyond each type's edges (integer
bounds, float32/float64 limits, NaN and infinities, DECIMAL at its precision,
dates and timestamps at years 1 and 9999 with offsets of up to 14 hours,
strings with NUL, noncharacters and lone surrogates, JSON with huge integers,
nested lists and structs) and an ``event_time`` drawn the same way. Refused
records must name index, field and reason; accepted ones go through the real
bus, the real committer and real Parquet, must not be quarantined, and must
read back equal through DuckDB with the cast the query sandbox applies.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import math
import struct
import sys
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.catalog import commands, reads
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, parse_type
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.runtime import Runtime
from tests.fixtures import shared_committer

COLUMNS = {
    "b": "BOOLEAN",
    "si": "SMALLINT",
    "i": "INTEGER",
    "bi": "BIGINT",
    "f": "FLOAT",
    "d": "DOUBLE",
    "d38": "DECIMAL(38,0)",
    "d3838": "DECIMAL(38,38)",
    "d52": "DECIMAL(5,2)",
    "s": "VARCHAR",
    "dt": "DATE",
    "ts": "TIMESTAMP",
    "tz": "TIMESTAMPTZ",
    "j": "JSON",
    "lts": "TIMESTAMP[]",
    "ll": "BIGINT[][]",
    "st": "STRUCT(a DECIMAL(5,2), b VARCHAR[], c STRUCT(t TIMESTAMPTZ))",
}
TYPES = {name: parse_type(text) for name, text in COLUMNS.items()}
_ids = itertools.count(1)

# --- edge values -------------------------------------------------------------

_F32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_FLOATS = st.one_of(
    st.floats(),
    st.sampled_from(
        [
            0.0,
            -0.0,
            5e-324,
            1.4e-45,
            1e-46,
            _F32_MAX,
            -_F32_MAX,
            3.4028235677973366e38,  # just above FLOAT's largest
            2.0**128,
            sys.float_info.max,
            -sys.float_info.max,
            math.nan,
            math.inf,
            -math.inf,
        ]
    ),
    st.sampled_from([2**24 + 1, 2**53 + 1, 2**127, 2**128, 2**1023, 2**1024, -(2**1024)]),
)
_OFFSETS = st.sampled_from([-14 * 60, -5 * 60, -1, 0, 1, 5 * 60 + 30, 14 * 60]).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
_EDGE_DATETIMES = st.one_of(
    st.datetimes(),
    st.sampled_from(
        [
            dt.datetime(1, 1, 1),
            dt.datetime(1, 1, 1, 13, 59, 59),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
            dt.datetime(9999, 12, 31, 10, 0),
            dt.datetime(1970, 1, 1),
        ]
    ),
)


@st.composite
def _timestamps(draw: st.DrawFn) -> str:
    when = draw(_EDGE_DATETIMES)
    if draw(st.booleans()):
        when = when.replace(tzinfo=draw(_OFFSETS))
    text = when.isoformat(sep=draw(st.sampled_from(["T", " "])))
    return draw(
        st.sampled_from(
            [
                text,
                text + "7" if "." in text else text,  # 7 fractional digits
                text.replace("+00:00", "Z"),
                text[:10],
            ]
        )
    )


_BAD_TIMES = st.sampled_from(
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "0000-01-01T00:00:00",
        "10000-01-01T00:00:00",
        "2024-01-01T24:00:00",
        "2024-02-30",
        "",
    ]
)
_TEXT = st.text(st.characters(), max_size=8)
_ODD_TEXT = st.one_of(
    _TEXT,
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfff", "\uffff", "\U0010ffff", "e\u0301"]),
)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([10**30, -(10**40)]),
        _FLOATS,
        _ODD_TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_ODD_TEXT, inner, max_size=3)
        ),
        max_leaves=6,
    )


def _decimals(t: ColumnType) -> st.SearchStrategy[Any]:
    ctx = decimal.Context(prec=100)
    top = decimal.Decimal(10**t.precision - 1).scaleb(-t.scale, ctx)
    limit = decimal.Decimal(10).scaleb(t.precision - t.scale - 1, ctx)
    half = decimal.Decimal(5).scaleb(-t.scale - 1, ctx)
    exact = st.integers(-(10**t.precision) + 1, 10**t.precision - 1).map(
        lambda n: str(decimal.Decimal(n).scaleb(-t.scale, ctx))
    )
    return st.one_of(
        exact,
        st.sampled_from(
            [
                str(top),
                str(-top),
                str(limit),
                str(top + half),  # rounds up to the limit
                str(top + half / 2),  # rounds down to the top
                "1E+37",
                "1e-50",
                " 12 ",
                "1_0",
                "-0",
                "NaN",
                "Infinity",
                "1E+1000000000",
            ]
        ),
        _FLOATS,
        st.integers(-(10**40), 10**40),
    )


def edge_values(t: ColumnType) -> st.SearchStrategy[Any]:
    """Values at and beyond the edges of ``t``, valid and invalid mixed."""
    kind = t.kind
    if kind in ("SMALLINT", "INTEGER", "BIGINT"):
        bits = {"SMALLINT": 15, "INTEGER": 31, "BIGINT": 63}[kind]
        edges = [-(2**bits) - 1, -(2**bits), 2**bits - 1, 2**bits, 0]
        return st.one_of(
            st.sampled_from(edges),
            st.integers(-(2**bits), 2**bits - 1),
            st.integers(),
            st.sampled_from([True, 1.0]),
        )
    if kind in ("FLOAT", "DOUBLE"):
        return _FLOATS
    if kind == "BOOLEAN":
        return st.sampled_from([True, False, 0, "true"])
    if kind == "VARCHAR":
        return _ODD_TEXT
    if kind == "JSON":
        return _json_values().filter(lambda v: v is not None)
    if kind == "DECIMAL":
        return _decimals(t)
    if kind == "DATE":
        return st.one_of(
            st.dates().map(dt.date.isoformat),
            st.sampled_from(["0001-01-01", "9999-12-31", "2020-W01-1", "20200101", "0000-12-31"]),
        )
    if kind in ("TIMESTAMP", "TIMESTAMPTZ"):
        return st.one_of(_timestamps(), _BAD_TIMES)
    if kind == "LIST":
        assert t.element is not None
        return st.lists(st.one_of(st.none(), edge_values(t.element)), max_size=3)
    assert kind == "STRUCT"
    return st.fixed_dictionaries(
        {}, optional={name: st.one_of(st.none(), edge_values(ft)) for name, ft in t.fields}
    )


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(COLUMNS)), min_size=1, max_size=4, unique=True))
    payload = {name: draw(edge_values(TYPES[name])) for name in names}
    rec: dict[str, Any] = {"idempotency_key": f"k{next(_ids)}", "payload": payload}
    event_time = draw(st.one_of(st.none(), _timestamps(), _timestamps(), _BAD_TIMES))
    if event_time is not None:
        rec["event_time"] = event_time
    return rec


# --- what reading back must give ---------------------------------------------


def _utc(text: str, aware: bool) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    elif aware:
        value = value.replace(tzinfo=dt.UTC)
    return value if aware else value.replace(tzinfo=None)


def expected(t: ColumnType, v: Any) -> Any:
    """The value of type ``t`` that an accepted JSON value ``v`` stands for."""
    if v is None:
        return None
    kind = t.kind
    if kind == "FLOAT":
        return struct.unpack("<f", struct.pack("<f", float(v)))[0]
    if kind == "DOUBLE":
        return float(v)
    if kind == "DECIMAL":
        ctx = decimal.Context(prec=100)
        return decimal.Decimal(str(v)).quantize(decimal.Decimal(1).scaleb(-t.scale), context=ctx)
    if kind == "DATE":
        return dt.date.fromisoformat(v)
    if kind in ("TIMESTAMP", "TIMESTAMPTZ"):
        return _utc(v, aware=kind == "TIMESTAMPTZ")
    if kind == "JSON":
        return v
    if kind == "LIST":
        assert t.element is not None
        return [expected(t.element, x) for x in v]
    if kind == "STRUCT":
        return {name: expected(ft, v.get(name)) for name, ft in t.fields}
    return v


def read_back(t: ColumnType, v: Any) -> Any:
    """A DuckDB value of type ``t`` in the form ``expected`` gives."""
    if v is None:
        return None
    if t.kind == "JSON":
        return json.loads(v)
    if t.kind == "TIMESTAMPTZ":
        return v.astimezone(dt.UTC)
    if t.kind == "LIST":
        assert t.element is not None
        return [read_back(t.element, x) for x in v]
    if t.kind == "STRUCT":
        return {name: read_back(ft, v[name]) for name, ft in t.fields}
    return v


# --- the property ------------------------------------------------------------


def _table(rt: Runtime) -> TableDef:
    found = rt.db.call(lambda c: reads.get_table(c, "default", "edges"))
    if found is not None:
        return found
    columns = [{"name": "id", "type": "BIGINT", "nullable": False}]
    columns += [{"name": n, "type": t} for n, t in COLUMNS.items()]
    body = {"name": "edges", "columns": columns}
    return rt.db.call(lambda c: commands.create_table(c, "default", body))


def _committed_rows(rt: Runtime, table: TableDef, ids: list[int]) -> dict[int, dict[str, Any]]:
    def files(c: Any) -> list[str]:
        snap = reads.latest_snapshot(c, "default")
        assert snap is not None
        found = reads.snapshot_files(c, "default", snap.snapshot_id)
        return [str(rt.store.local_path(f.path)) for f in found if f.table_id == table.table_id]

    paths = rt.db.call(files, transaction=False)
    casts = ", ".join(f'CAST("{n}" AS {TYPES[n].render()}) AS "{n}"' for n in COLUMNS)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            f"SELECT id, {casts} FROM read_parquet(?, union_by_name = true)"
            f" WHERE id IN ({', '.join(map(str, ids))})",
            [paths],
        ).fetchall()
    return {row[0]: dict(zip(COLUMNS, row[1:], strict=True)) for row in rows}


def _check_refusal(error: DuckMeshError, rec: dict[str, Any]) -> None:
    assert error.error_code == "VALIDATION_FAILED", error
    problems = error.context["errors"]
    assert problems
    for problem in problems:
        assert problem["index"] == 0
        assert (
            problem["field"] == "event_time"
            or problem["field"].removeprefix("payload.") in rec["payload"]
        ), problem
        assert isinstance(problem["reason"], str)
        assert problem["reason"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(records(), min_size=1, max_size=6))
def test_every_accepted_value_commits_and_reads_back_equal(
    runtime: Runtime, batch: list[dict[str, Any]]
) -> None:
    rt = runtime
    table = _table(rt)
    validator = TableValidator.for_table(table)
    accepted: dict[int, dict[str, Any]] = {}
    for rec in batch:
        row_id = next(_ids)
        rec["payload"]["id"] = row_id
        try:
            [ingest] = validate_records(validator, [rec], max_records=10, max_record_bytes=1 << 20)
        except DuckMeshError as error:
            _check_refusal(error, rec)
            continue
        assert not isinstance(rt.bus.publish("default", [[ingest]])[0], DuckMeshError)
        accepted[row_id] = rec["payload"]
    if not accepted:
        return
    # One committer for the whole run: a new one would wait out the lease.
    committer = shared_committer(rt)
    while (outcome := committer.commit_once()) is not None:
        assert outcome.snapshot_id is not None, outcome
        # Nothing accepted is set aside.
        assert outcome.quarantined == 0, (rt.bus.quarantined("default", 1), batch)
    rows = _committed_rows(rt, table, list(accepted))
    assert set(rows) == set(accepted)
    for row_id, payload in accepted.items():
        for name, value in payload.items():
            if name == "id":
                continue
            t = TYPES[name]
            assert read_back(t, rows[row_id][name]) == expected(t, value), (name, value)
