"""A group of requests held as columns (``RecordColumns``) is planned and
encoded without an object per record; the result must be exactly what the
record-by-record plan and encoding give for the same records: receipts,
token offsets, run cuts, stored rows, keys, hashes and trace ownership."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckmesh.bus import IngestRecord, NewReceipts, Receipt, RecordColumns, receipts_summary
from duckmesh.bus.batches import read_ipc
from duckmesh.bus.record_batches import (
    Encoded,
    GroupPlan,
    Joined,
    encode,
    owners,
    plan_group,
    rebased,
)
from duckmesh.catalog.model import TableDef
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.record_columns import MIN_RECORDS, validate_columns
from duckmesh.ingest.validation import TableValidator
from tests.ingest.test_record_columns import MAX_BYTES, table_def
from tests.strategies import ingest_records, scalar_types, table_definitions


def _stored(enc: Encoded) -> list[tuple[Any, ...]]:
    """The batches as rows (IPC bytes may chunk equal rows differently)."""
    return [(*b[:6], read_ipc(b[6]).combine_chunks(), b[7]) for b in enc.batches]


def _outcomes(plan: GroupPlan) -> list[object]:
    return [
        (r.error_code, str(r), r.context) if isinstance(r, DuckMeshError) else list(r)
        for r in plan.results
    ]


def _same_encoding(a: Encoded, b: Encoded) -> None:
    assert (a.table_ids, a.keys, a.hashes) == (b.table_ids, b.keys, b.hashes)
    assert [(o, r) for o, r in a.fallback] == [(o, r) for o, r in b.fallback]
    left, right = _stored(a), _stored(b)
    assert [x[:6] + x[7:] for x in left] == [x[:6] + x[7:] for x in right]
    for x, y in zip(left, right, strict=True):
        assert x[6].schema.equals(y[6].schema, check_metadata=True)
        assert x[6].equals(y[6]), (x[6].to_pylist(), y[6].to_pylist())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_group_of_column_requests_plans_and_encodes_as_its_records(
    data: st.DataObject,
) -> None:
    base = table_def(data.draw(table_definitions(canonical=True, types=scalar_types())))
    # Two tables and a later schema version of the first: runs cut at each change.
    defs = {
        (base.table_id, base.schema_version): base,
        ("t-2", base.schema_version): attrs.evolve(base, table_id="t-2"),
        (base.table_id, base.schema_version + 1): attrs.evolve(
            base, schema_version=base.schema_version + 1
        ),
    }
    requests: list[RecordColumns] = []
    for n in range(data.draw(st.integers(1, 4))):
        table = defs[data.draw(st.sampled_from(sorted(defs)))]
        # A prefix drawn from few: two requests may share keys (then the
        # group is decided record by record).
        prefix = data.draw(st.sampled_from([f"p{n}", "shared"]))
        raw = data.draw(ingest_records(table, min_size=MIN_RECORDS, max_size=8, key_prefix=prefix))
        built = validate_columns(TableValidator.for_table(table), raw, MAX_BYTES)
        assert isinstance(built, RecordColumns)
        if data.draw(st.booleans()):
            built.arrow = None  # the bus parses the texts instead
        requests.append(built)
    as_records = [list(r) for r in requests]
    start = data.draw(st.integers(0, 10**6))
    fast, slow = plan_group(requests, {}, start), plan_group(as_records, {}, start)
    assert _outcomes(fast) == _outcomes(slow)
    assert (fast.clean, fast.starts) == (slow.clean, slow.starts)
    assert list(fast.new) == list(slow.new)
    assert isinstance(fast.new, Joined) == fast.clean
    if not fast.clean:
        return
    assert rebased(fast, 77) == rebased(slow, 77)
    for result in fast.results:
        assert not isinstance(result, DuckMeshError)
        assert receipts_summary(result) == (0, max(r.token for r in result))
    traces = [f"trace-{i}" for i in range(len(requests))]
    max_rows = data.draw(st.integers(1, 20))
    max_bytes = data.draw(st.integers(1, 400))
    _same_encoding(
        encode(
            fast.new,
            lambda t, v: defs.get((t, v)),
            owners(fast, traces),
            max_rows=max_rows,
            max_bytes=max_bytes,
        ),
        encode(
            slow.new,
            lambda t, v: defs.get((t, v)),
            owners(slow, traces),
            max_rows=max_rows,
            max_bytes=max_bytes,
        ),
    )
    # An unknown table keeps its records as JSON, the same ones either way.
    only = {k: v for k, v in defs.items() if k[0] != "t-2"}
    _same_encoding(
        encode(fast.new, lambda t, v: only.get((t, v))),
        encode(slow.new, lambda t, v: only.get((t, v))),
    )


def test_record_columns_read_as_their_records() -> None:
    table: TableDef = table_def(
        {"name": "ev", "columns": [{"name": "id", "type": "BIGINT", "nullable": False}]}
    )
    raw = [{"idempotency_key": f"k{i}", "payload": {"id": i}} for i in range(5)]
    cols = validate_columns(TableValidator.for_table(table), raw, MAX_BYTES)
    assert isinstance(cols, RecordColumns)
    records: Sequence[IngestRecord] = list(cols)
    assert len(cols) == 5
    assert cols[-1] == records[4]
    assert cols[1:3] == records[1:3]
    assert cols == records
    assert records == cols
    with pytest.raises(IndexError):
        cols[5]
    joined = Joined([cols, cols])
    assert len(joined) == 10
    assert joined[7] == records[2]
    assert joined[-1] == records[4]
    assert joined[4:6] == [records[4], records[0]]


def test_new_receipts_read_as_a_list() -> None:
    receipts = NewReceipts(11, 3)
    listed = [Receipt(11, False), Receipt(12, False), Receipt(13, False)]
    assert receipts == listed
    assert listed == receipts
    assert receipts[-1] == Receipt(13, False)
    assert receipts[1:] == listed[1:]
    assert receipts_summary(receipts) == (0, 13)
    assert receipts_summary([Receipt(4, True), Receipt(9, False)]) == (1, 9)
    assert receipts != [Receipt(11, False)]
    with pytest.raises(IndexError):
        receipts[3]
