"""Upload batches on the bus and in the committer: claimed in token order with
records, split by the claim limit only between batches, committed as Arrow;
rows of a batch that cannot be committed are found by bisection and
quarantined without blocking the records around them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator

import pyarrow as pa
import pytest
import trio

from duckmesh.bus import IngestRecord, UploadRequest
from duckmesh.catalog import commands, reads
from duckmesh.config import Config
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, build_runtime, coordinator_actors, migrate_and_bootstrap
from duckmesh.supervisors.faults import POISON_MARKER

TABLE = {
    "name": "t",
    "columns": [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "v", "type": "VARCHAR"},
    ],
    "primary_key": ["id"],
}


def _record(
    table_id: str, key: str, payload: dict[str, object], op: str = "upsert"
) -> IngestRecord:
    text = json.dumps(payload)
    return IngestRecord(table_id, key, op, text, hashlib.sha256(text.encode()).digest(), None, 1)


def _upload(table_id: str, key: str, data: pa.Table, op: str = "upsert") -> UploadRequest:
    return UploadRequest(
        table_id=table_id,
        op=op,
        event_time_column=None,
        schema_version=1,
        data=data,
        content_hash=hashlib.sha256(key.encode()).digest(),
        idempotency_key=key,
        row_keys=None,
        row_hashes=None,
    )


async def test_records_and_uploads_commit_in_token_order(runtime: Runtime) -> None:
    rt = runtime
    table = rt.db.call(lambda c: commands.create_table(c, "default", TABLE))
    tid = table.table_id
    rt.bus.publish("default", [[_record(tid, "a", {"id": 1, "v": "rec1"})]])  # token 1
    receipt = rt.bus.publish_upload(
        "default", _upload(tid, "u1", pa.table({"id": [1, 2, 2], "v": ["up1", "up2", "up2b"]}))
    )
    assert (receipt.first_token, receipt.last_token) == (2, 4)
    rt.bus.publish("default", [[_record(tid, "b", {"id": 2, "v": "rec2"})]])  # token 5
    # A claim never splits an upload batch: with room for 2 rows it takes the
    # record and the (larger) batch only when nothing else was taken.
    first = rt.bus.claim("c", limit=2, max_bytes=1 << 20, lease_s=5)
    assert first is not None
    # (the record is itself a one-row batch since ADR 0014)
    assert (first.after_token, first.last_token, first.size) == (0, 1, 1)
    assert [(u.first_token, u.last_token) for u in first.uploads] == [(1, 1)]
    rt.bus.nack(first, "test")
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.watermark == 5
    assert outcome.records == 5
    result = await rt.queries.execute(
        "default", QueryRequest(sql="select id, v from t order by id")
    )
    # Upserts resolve by token across records and uploads.
    assert result["rows"] == [[1, "up1"], [2, "rec2"]]


async def test_an_upload_that_cannot_commit_is_quarantined_whole(runtime: Runtime) -> None:
    rt = runtime
    table = rt.db.call(lambda c: commands.create_table(c, "default", TABLE))
    tid = table.table_id
    rt.bus.publish("default", [[_record(tid, "a", {"id": 1, "v": "ok"})]])
    # Written straight to the bus, past validation: ids that are not BIGINT.
    bad = pa.table({"id": ["x", "y"], "v": ["a", "b"]})
    rt.bus.publish_upload("default", _upload(tid, "bad", bad))
    rt.bus.publish("default", [[_record(tid, "c", {"id": 3, "v": "ok"})]])
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.watermark == 4  # the tenant is not blocked
    assert outcome.quarantined == 2
    rows = rt.db.call(
        lambda c: c.execute("SELECT token, reason FROM bus_quarantine ORDER BY token").fetchall()
    )
    assert [r[0] for r in rows] == [2, 3]
    assert all(r[1].startswith("commit failed") for r in rows)
    result = await rt.queries.execute("default", QueryRequest(sql="select id from t order by id"))
    assert result["rows"] == [[1], [3]]


@pytest.fixture
def faulty_runtime(make_config: Callable[..., Config], dsn: str) -> Iterator[Runtime]:
    rt = build_runtime(make_config(enable_faults=True), dsn=dsn)
    migrate_and_bootstrap(rt)
    try:
        yield rt
    finally:
        rt.close()


async def test_only_the_failing_rows_of_a_batch_are_quarantined(faulty_runtime: Runtime) -> None:
    """Rows of stored batches (an upload and a request of JSON records) that
    fail on their own are found by bisection and set aside; their neighbours
    in the same batch commit (ADR 0014)."""
    rt = faulty_runtime
    rt.faults.arm("coordinator.poison_record", count=1_000_000)
    table = rt.db.call(lambda c: commands.create_table(c, "default", TABLE))
    tid = table.table_id
    values = ["ok", POISON_MARKER, "ok", "ok", f"x{POISON_MARKER}", "ok"]
    data = pa.table({"id": list(range(1, 7)), "v": values})
    rt.bus.publish_upload("default", _upload(tid, "up", data))  # tokens 1..6
    records = [_record(tid, f"r{i}", {"id": 10 + i, "v": v}) for i, v in enumerate(values)]
    assert rt.bus.publish("default", [records])[0] != []  # tokens 7..12, one stored batch
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.watermark == 12  # nothing blocks the tenant
    quarantined = rt.db.call(
        lambda c: c.execute("SELECT token FROM bus_quarantine ORDER BY token").fetchall()
    )
    assert [r[0] for r in quarantined] == [2, 5, 8, 11]
    result = await rt.queries.execute("default", QueryRequest(sql="select id from t order by id"))
    assert result["rows"] == [[1], [3], [4], [6], [10], [12], [13], [15]]


async def test_a_commit_writes_one_file_per_partition_however_many_batches(
    runtime: Runtime,
) -> None:
    """Each group commit is its own stored batch (ADR 0014); a commit of many
    of them writes one file per (table, partition), not one per batch, and a
    keyed table keeps the newest row per key across the batches — also across
    batches stored with different columns (a group of mixed ops carries each
    row's op)."""
    rt = runtime
    table = rt.db.call(lambda c: commands.create_table(c, "default", TABLE))
    tid = table.table_id
    for g in range(6):  # group g upserts ids g and g + 1: tokens 2g+1, 2g+2
        recs = [_record(tid, f"g{g}-{i}", {"id": i, "v": f"g{g}"}) for i in (g, g + 1)]
        assert rt.bus.publish("default", [recs])[0] != []
    mixed = [  # tokens 13, 14
        _record(tid, "m-0", {"id": 0, "v": "m"}),
        _record(tid, "m-6", {"id": 6}, op="delete"),
    ]
    assert rt.bus.publish("default", [mixed])[0] != []
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    snapshot_id = outcome.snapshot_id
    assert snapshot_id is not None
    assert outcome.records == 14
    files = rt.db.call(lambda c: reads.snapshot_files(c, "default", snapshot_id))
    partitions = {f.path.rsplit("/", 1)[0] for f in files}
    assert len(files) == len(partitions) < 7
    assert sum(f.record_count for f in files) == 7  # ids 0..6, each once (6 as a tombstone)
    assert min(f.min_token for f in files) == 3  # tokens 1, 2 (ids 0, 1) were replaced
    assert max(f.max_token for f in files) == 14
    sql = "select id, v from t order by id"
    result = await rt.queries.execute("default", QueryRequest(sql=sql))
    assert result["rows"] == [[0, "m"], *([k, f"g{k}"] for k in range(1, 6))]
