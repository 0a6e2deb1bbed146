"""Ingest validation edge cases: the whole request is refused, with reasons."""

from __future__ import annotations

import datetime as dt

import pytest

from duckmesh.catalog.model import Column, TableDef
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import TableValidator, validate_records

TABLE = TableDef(
    table_id="t-1",
    tenant_id="default",
    name="t",
    columns=(Column("id", "BIGINT", False), Column("note", "VARCHAR")),
    primary_key=("id",),
    partition_by=None,
    retention=None,
    compatibility="backward",
    schema_version=1,
    created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
)


def _validate(records: object) -> list[object]:
    return list(
        validate_records(
            TableValidator.for_table(TABLE), records, max_records=100, max_record_bytes=1000
        )
    )


def test_lone_surrogates_are_refused_not_crashing() -> None:
    with pytest.raises(DuckMeshError) as refused:
        _validate([{"idempotency_key": "a", "payload": {"id": 1, "note": "\ud800"}}])
    assert refused.value.error_code == "VALIDATION_FAILED"
    # Named down to the column (it was only "payload" before the column check).
    assert refused.value.context["errors"][0]["field"] == "payload.note"


def test_every_problem_is_listed_and_nothing_is_returned() -> None:
    with pytest.raises(DuckMeshError) as refused:
        _validate(
            [
                {"idempotency_key": "ok", "payload": {"id": 1}},
                {"idempotency_key": "", "payload": {"id": 2}},
                {"idempotency_key": "b", "op": "merge", "payload": {"id": 3}},
                {"idempotency_key": "c", "op": "delete", "payload": {}},
                {"idempotency_key": "d", "payload": {"id": "x"}},
            ]
        )
    fields = [(e["index"], e["field"]) for e in refused.value.context["errors"]]
    assert fields == [(1, "idempotency_key"), (2, "op"), (3, "payload.id"), (4, "payload.id")]


def test_same_payload_gives_same_hash_whatever_the_key_order() -> None:
    a = _validate([{"idempotency_key": "k", "payload": {"id": 1, "note": "x"}}])
    b = _validate([{"idempotency_key": "k", "payload": {"note": "x", "id": 1}}])
    assert a[0].payload_hash == b[0].payload_hash  # type: ignore[attr-defined]


def test_a_lone_surrogate_in_the_idempotency_key_names_the_key() -> None:
    with pytest.raises(DuckMeshError) as refused:
        _validate([{"idempotency_key": "k\ud800", "payload": {"id": 1}}])
    assert refused.value.context["errors"] == [
        {
            "index": 0,
            "field": "idempotency_key",
            "reason": "contains a lone surrogate (not valid Unicode)",
        }
    ]
