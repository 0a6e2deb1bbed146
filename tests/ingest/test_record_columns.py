"""The column-by-column check of JSON records (``ingest.record_columns``).

It must accept exactly what the record-by-record check accepts, as the same
records (canonical text, hash, event time), and leave everything else to
it, so that errors keep their index, field and reason.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.catalog.model import Column, TableDef
from duckmesh.catalog.types import parse_type
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.envelope import record_hash, record_hashes
from duckmesh.ingest.record_columns import MIN_RECORDS, validate_columns
from duckmesh.ingest.validation import TableValidator, _validate_each, validate_records
from tests.strategies import ingest_records, invalid_values_for, table_definitions

MAX_BYTES = 10_000


def table_def(body: dict[str, Any]) -> TableDef:
    key = tuple(body.get("primary_key") or ())
    columns = tuple(
        Column(
            c["name"],
            parse_type(c["type"]).render(),
            bool(c.get("nullable", True)) and c["name"] not in key,
        )
        for c in body["columns"]
    )
    return TableDef(
        table_id="t-1",
        tenant_id="default",
        name=body["name"],
        columns=columns,
        primary_key=key,
        partition_by=None,
        retention=None,
        compatibility="backward",
        schema_version=3,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


EVENTS = table_def(
    {
        "name": "events",
        "columns": [
            {"name": "id", "type": "BIGINT", "nullable": False},
            {"name": "kind", "type": "VARCHAR"},
            {"name": "value", "type": "DOUBLE"},
            {"name": "at", "type": "TIMESTAMP"},
            {"name": "doc", "type": "JSON"},
            {"name": "tags", "type": "VARCHAR[]"},
        ],
        "primary_key": ["id"],
    }
)


def outcome(check: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("accepted", check())
    except DuckMeshError as exc:
        return ("refused", exc.error_code, exc.context)


def both(tv: TableValidator, records: list[Any], max_bytes: int = MAX_BYTES) -> tuple[Any, Any]:
    """(what validate_records answers, what the record-by-record check answers)."""
    full = outcome(
        lambda: validate_records(tv, records, max_records=1000, max_record_bytes=max_bytes)
    )
    return full, outcome(lambda: _validate_each(tv, records, max_bytes))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_requests_take_the_column_path_with_the_same_records(data: st.DataObject) -> None:
    table = table_def(data.draw(table_definitions(canonical=True)))
    records = data.draw(ingest_records(table, max_size=8))
    tv = TableValidator.for_table(table)
    assert validate_columns(tv, records, MAX_BYTES) == _validate_each(tv, records, MAX_BYTES)


def _corrupt(
    draw: Callable[[st.SearchStrategy[Any]], Any], table: TableDef, records: list[dict[str, Any]]
) -> None:
    """Spoil one record of ``records`` in one of the ways a client can."""
    i = draw(st.integers(0, len(records) - 1))
    rec = records[i]
    if type(rec) is not dict or type(rec.get("payload")) is not dict:
        return  # spoilt already
    how = draw(
        st.sampled_from(
            ["value", "null", "absent", "unknown", "key", "op", "time", "shape", "field", "repeat"]
        )
    )
    col = draw(st.sampled_from(table.columns))
    if how == "value":
        rec["payload"][col.name] = draw(invalid_values_for(col.parsed))
    elif how == "null":
        rec["payload"][col.name] = None
    elif how == "absent":
        rec["payload"].pop(col.name, None)
    elif how == "unknown":
        rec["payload"]["not a column"] = 1
    elif how == "key":
        rec["idempotency_key"] = draw(st.sampled_from(["", "a\x00b", "k" * 257, 5, None, "\ud800"]))
    elif how == "op":
        rec["op"] = draw(st.sampled_from(["merge", None, 1, ["insert"], "upsert", "delete"]))
    elif how == "time":
        rec["event_time"] = draw(
            st.sampled_from(["noon", 5, "", "0001-01-01T00:00:00+05:00", "2026-02-30T00:00:00"])
        )
    elif how == "shape":
        records[i] = draw(st.sampled_from([[], "record", None, {"payload": {}}]))
    elif how == "field":
        rec["extra"] = True
    else:
        other = records[draw(st.integers(0, len(records) - 1))]
        # The other record may have been spoilt into another shape already.
        if type(other) is dict and "idempotency_key" in other:
            rec["idempotency_key"] = other["idempotency_key"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_request_gets_the_record_by_record_answer(data: st.DataObject) -> None:
    table = table_def(data.draw(table_definitions(canonical=True)))
    records = data.draw(ingest_records(table, min_size=MIN_RECORDS, max_size=8))
    for _ in range(data.draw(st.integers(1, 2))):
        _corrupt(data.draw, table, records)
    tv = TableValidator.for_table(table)
    full, each = both(tv, copy.deepcopy(records))
    assert full == each
    if each[0] == "refused":
        assert validate_columns(tv, records, MAX_BYTES) is None


def _events(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {
            "idempotency_key": f"k{i}",
            "payload": {"id": i, "kind": "click", "value": i / 4, "at": "2026-01-01T00:00:00"}
            | fields,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": 'é ü 🦆 \u2028 "quoted" \\ \n\t\x01'},  # unicode and escapes
        {"value": 10**300},  # a huge integer a DOUBLE holds
        {"value": -0.0},
        {"kind": None, "value": None},  # explicit nulls
        {"doc": {"z": [1, 2.5, {"b": None, "a": "ü"}], "a": 10**40}},  # nested JSON, sorted
        {"tags": ["a", None, "🦆"]},
    ],
)
def test_unusual_values_give_the_same_records(fields: dict[str, Any]) -> None:
    tv = TableValidator.for_table(EVENTS)
    records = _events(50, **fields)
    assert validate_columns(tv, records, MAX_BYTES) == _validate_each(tv, records, MAX_BYTES)


def test_mixed_ints_and_floats_and_absent_columns_give_the_same_records() -> None:
    tv = TableValidator.for_table(EVENTS)
    records = _events(20)
    for i, rec in enumerate(records):
        if i % 3 == 0:
            rec["payload"]["value"] = i  # an int in a DOUBLE column stays "i" in the text
        if i % 4 == 0:
            del rec["payload"]["kind"]
        if i % 5 == 0:
            rec["op"], rec["payload"] = "delete", {"id": i}
        if i % 2 == 0:
            rec["event_time"] = "2026-03-01T10:00:00+02:00"
    columns = validate_columns(tv, records, MAX_BYTES)
    assert columns is not None
    assert columns == _validate_each(tv, records, MAX_BYTES)
    assert columns[3].payload == '{"at":"2026-01-01T00:00:00","id":3,"kind":"click","value":3}'
    assert columns[0].event_time == dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"kind": 7}, "payload.kind", "expected VARCHAR (a string)"),  # mixed-type column
        ({"id": 2**63}, "payload.id", "9223372036854775808 is outside the BIGINT range"),
        ({"id": None}, "payload.id", "must not be null"),
        ({"value": "1.5"}, "payload.value", "expected DOUBLE (a number)"),
        (
            {"at": "2026-02-30T00:00:00"},
            "payload.at",
            "'2026-02-30T00:00:00' is not an ISO 8601 timestamp",
        ),
        ({"kind": "\ud800"}, "payload.kind", "contains a lone surrogate (not valid Unicode)"),
    ],
)
def test_a_bad_value_in_a_large_request_is_named_by_index_and_field(
    bad: dict[str, Any], field: str, reason: str
) -> None:
    tv = TableValidator.for_table(EVENTS)
    records = _events(1000)
    records[637]["payload"] |= bad
    assert validate_columns(tv, records, MAX_BYTES) is None
    with pytest.raises(DuckMeshError) as refused:
        validate_records(tv, records, max_records=1000, max_record_bytes=MAX_BYTES)
    assert refused.value.error_code == "VALIDATION_FAILED"
    assert refused.value.context["errors"] == [{"index": 637, "field": field, "reason": reason}]


def test_a_record_too_large_is_named_by_index() -> None:
    tv = TableValidator.for_table(EVENTS)
    records = _events(100)
    records[42]["payload"]["kind"] = "x" * 200
    full, each = both(tv, records, max_bytes=200)
    assert full == each
    assert full[:2] == ("refused", "PAYLOAD_TOO_LARGE")
    assert full[2]["record_indexes"] == [42]


def test_a_key_used_twice_is_a_duplicate_or_a_conflict_as_before() -> None:
    tv = TableValidator.for_table(EVENTS)
    same = _events(3)
    same[2] = copy.deepcopy(same[0])
    full, each = both(tv, same)
    assert full == each
    assert full[0] == "accepted"
    assert [r.idempotency_key for r in full[1]] == ["k0", "k1", "k0"]
    conflict = _events(3)
    conflict[2]["idempotency_key"] = "k0"
    full, each = both(tv, conflict)
    assert full == each
    assert full[:2] == ("refused", "IDEMPOTENCY_CONFLICT")
    assert full[2]["record_index"] == 2


def test_a_small_request_goes_record_by_record_with_the_same_answer() -> None:
    tv = TableValidator.for_table(EVENTS)
    records = _events(MIN_RECORDS - 1)
    assert validate_columns(tv, records, MAX_BYTES) == _validate_each(tv, records, MAX_BYTES)
    full, each = both(tv, records)
    assert full == each


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "upsert", "delete"]),
            st.none() | st.text(),
            st.text(min_size=1),
            st.text(),
        ),
        max_size=5,
    )
)
def test_digests_in_bulk_are_the_stored_ones(rows: list[tuple[str, str | None, str, str]]) -> None:
    """Keys stored before must match retries: the bulk digests equal
    ``record_hash``'s, and a pinned one never changes."""
    ops, keys, texts = [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    times: list[object] = [r[1] for r in rows]
    try:
        expected = [record_hash(*r) for r in rows]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            record_hashes(ops, times, keys, texts)
        return
    assert record_hashes(ops, times, keys, texts) == expected
    pinned = record_hashes(["insert"], ["2026-01-01T00:00:00"], ["k0"], ['{"id":0}'])[0]
    # SHA-256 of 'insert\0 2026-01-01T00:00:00 \0 k0 \0 {"id":0}' (no spaces).
    assert pinned.hex() == "d129ec119cb1860a42b5fa1e021617eac638ea2b6328c95d5e3bd05c75908432"
