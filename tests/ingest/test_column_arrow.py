"""Arrow rows built from a request's checked columns (``ingest.column_arrow``).

The bus stores them instead of parsing each record's canonical text again
(ADR 0014): for any valid request, and for any part of one (a group commit
skips duplicates), the two builds must give equal Arrow tables, and the
records themselves (keys, hashes, text) must not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.bus import IngestRecord
from duckmesh.bus.batches import read_ipc
from duckmesh.bus.record_batches import _run_table, encode
from duckmesh.catalog.model import TableDef
from duckmesh.ingest.record_columns import MIN_RECORDS, validate_columns
from duckmesh.ingest.validation import TableValidator
from tests.ingest.test_record_columns import EVENTS, MAX_BYTES, _events, table_def
from tests.strategies import column_types, ingest_records, scalar_types, table_definitions

# Column kinds built here; a table with any other falls back to the text.
BUILT = {"BOOLEAN", "SMALLINT", "INTEGER", "BIGINT", "DOUBLE", "VARCHAR", "DATE", "DECIMAL"}
BUILT |= {"TIMESTAMP", "TIMESTAMPTZ"}


def _rows(table: TableDef, run: Sequence[IngestRecord]) -> tuple[object, ...]:
    try:
        rows, op, event_time_column = _run_table(table, run)
    except ValueError:
        return ("kept as JSON",)
    return rows.combine_chunks(), op, event_time_column


def _text_only(records: Sequence[IngestRecord]) -> list[IngestRecord]:
    return [attrs.evolve(r, arrow=None, arrow_row=0) for r in records]


def _same_rows(table: TableDef, run: Sequence[IngestRecord]) -> None:
    built, parsed = _rows(table, run), _rows(table, _text_only(run))
    assert built[1:] == parsed[1:]
    if isinstance(built[0], pa.Table):
        assert isinstance(parsed[0], pa.Table)
        assert built[0].schema.equals(parsed[0].schema, check_metadata=True)
        assert built[0].equals(parsed[0]), (built[0].to_pylist(), parsed[0].to_pylist())
    else:
        assert built == parsed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), nested=st.booleans())
def test_rows_built_from_columns_equal_rows_parsed_from_text(
    data: st.DataObject, nested: bool
) -> None:
    types = column_types(max_leaves=3) if nested else scalar_types()
    table = table_def(data.draw(table_definitions(canonical=True, types=types)))
    records = data.draw(ingest_records(table, min_size=MIN_RECORDS, max_size=12))
    built = validate_columns(TableValidator.for_table(table), records, MAX_BYTES)
    assert built is not None
    if {c.parsed.kind for c in table.columns} <= BUILT:
        assert built[0].arrow is not None
    assert built == _text_only(built)  # keys, ops, text, hashes, event times
    _same_rows(table, built)
    picked = data.draw(st.lists(st.sampled_from(range(len(built))), min_size=1, unique=True))
    _same_rows(table, [built[i] for i in sorted(picked)])


def test_a_group_of_requests_with_skipped_records_stores_the_same_batches() -> None:
    tv = TableValidator.for_table(attrs.evolve(EVENTS, columns=EVENTS.columns[:4]))
    first = validate_columns(tv, _events(10), MAX_BYTES)
    second = validate_columns(tv, _events(10, kind=None, at="2026-05-01T01:02:03+02:00"), MAX_BYTES)
    assert first is not None
    assert second is not None
    assert first[0].arrow is not None
    assert second[0].arrow is not None
    new = first[:3] + first[5:] + second[1:]  # as a group leaves it after duplicates

    def stored(records: Sequence[IngestRecord]) -> list[pa.Table]:
        enc = encode(records, lambda t, v: tv.table)
        assert not enc.fallback
        return [read_ipc(b[6]) for b in enc.batches]

    assert stored(new) == stored(_text_only(new))
