"""The shared strategies generate what they promise (no database needed).

``ingest_records`` must produce requests the ingest validator accepts whole,
and records it accepts must reach Parquet rows without any being set aside
at commit time (the validator and the converters agree).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from duckmesh.bus.protocol import BusRecord
from duckmesh.catalog.model import Column, TableDef, parse_columns
from duckmesh.catalog.types import parse_type
from duckmesh.coordinator.parquet import build_tables
from duckmesh.ingest.validation import TableValidator, validate_records
from tests.strategies import (
    CatalogModel,
    CreateTable,
    CreateTenant,
    EvolveTable,
    catalog_commands,
    identifiers,
    ingest_records,
    schema_evolutions,
    table_definitions,
)


def table_from(body: dict[str, Any], version: int = 1) -> TableDef:
    """The TableDef the catalog would store for a create body."""
    key = tuple(body.get("primary_key") or ())
    columns = tuple(
        Column(c.name, c.type, False) if c.name in key else c
        for c in parse_columns(body["columns"])
    )
    return TableDef(
        table_id=f"{body['name']}-0000",
        tenant_id="acme",
        name=body["name"],
        columns=columns,
        primary_key=key,
        partition_by=body.get("partition_by"),
        retention=body.get("retention"),
        compatibility="backward",
        schema_version=version,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


@given(identifiers())
def test_identifiers_are_valid(name: str) -> None:
    from duckmesh.catalog.types import is_identifier

    assert is_identifier(name)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_ingest_records_pass_validation_and_reach_parquet(data: st.DataObject) -> None:
    table = table_from(data.draw(table_definitions(max_columns=4)))
    raw = data.draw(ingest_records(table, max_size=6))
    records = validate_records(
        TableValidator.for_table(table), raw, max_records=100, max_record_bytes=1 << 20
    )
    assert len(records) == len(raw)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    bus = [
        BusRecord(n, table.table_id, r.op, r.payload, r.event_time, now, 1)
        for n, r in enumerate(records, start=1)
    ]
    partitions, rejected = build_tables(table, bus)
    assert rejected == []
    rows = sum(p.arrow.num_rows for p in partitions)
    assert 1 <= rows <= len(raw)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_evolutions_keep_old_records_valid(data: st.DataObject) -> None:
    """Backward compatible means a record valid before is valid after."""
    body = data.draw(table_definitions(max_columns=3))
    before = table_from(body)
    raw = data.draw(ingest_records(before, max_size=3))
    change = data.draw(schema_evolutions(before))
    columns = list(before.columns)
    for c in change.get("add_columns", []):
        columns.append(Column(c["name"], parse_type(c["type"]).render(), True))
    for c in change.get("widen_columns", []):
        i = next(i for i, old in enumerate(columns) if old.name == c["name"])
        columns[i] = Column(c["name"], parse_type(c["type"]).render(), columns[i].nullable)
    after = attrs.evolve(before, columns=tuple(columns), schema_version=2)
    validate_records(
        TableValidator.for_table(after), raw, max_records=100, max_record_bytes=1 << 20
    )


@settings(max_examples=15, deadline=None)
@given(catalog_commands(max_size=20))
def test_command_sequences_start_with_a_tenant_and_track_the_model(cmds: list[Any]) -> None:
    assert isinstance(cmds[0], CreateTenant)
    assert cmds[0].expect is None
    model = CatalogModel.after(cmds)
    assert cmds[0].tenant_id in model.tenants
    for cmd in cmds:
        if isinstance(cmd, CreateTable | EvolveTable) and cmd.expect is None:
            assert cmd.tenant_id in model.tenants
