"""Upload batches on the bus and in the committer: claimed in token order with
records, split by the claim limit only between batches, committed as Arrow,
and an upload that cannot be committed is quarantined whole without blocking
the records around it."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import trio

from duckmesh.bus import IngestRecord, UploadRequest
from duckmesh.catalog import commands
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, coordinator_actors

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
    assert [r.token for r in first.records] == [1]
    assert first.uploads == ()
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
