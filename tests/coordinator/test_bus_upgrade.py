"""An old data directory's JSON records (``bus_record``, before migration
0003) still commit after the upgrade, and a retry of one of them is still
recognised: the migration moves their keys into ``bus_row_key`` (ADR 0014)."""

from __future__ import annotations

import hashlib
import json

import psycopg
import trio

from duckmesh import migrations
from duckmesh.bus import IngestRecord, Receipt
from duckmesh.catalog import commands
from duckmesh.errors import DuckMeshError
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, coordinator_actors

TABLE = {
    "name": "t",
    "columns": [{"name": "id", "type": "BIGINT"}, {"name": "v", "type": "VARCHAR"}],
}


def _record(table_id: str, key: str, payload: dict[str, object]) -> IngestRecord:
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    return IngestRecord(
        table_id, key, "insert", text, hashlib.sha256(text.encode()).digest(), None, 1
    )


def _write_as_before_0003(dsn: str, table_id: str, records: list[IngestRecord]) -> None:
    """What the bus wrote before 0003: one bus_record row per record."""
    with psycopg.connect(dsn) as conn:
        # Back to 0002, whatever came after 0003.
        newer = [v for v in migrations.applied(conn) if v >= 3]
        migrations.migrate_down(conn, steps=len(newer))
        conn.execute(
            "INSERT INTO bus_token_counter (tenant_id, last_token) VALUES ('default', %s)",
            (len(records),),
        )
        conn.execute("INSERT INTO bus_scope (scope) VALUES ('default') ON CONFLICT DO NOTHING")
        for token, rec in enumerate(records, 1):
            conn.execute(
                "INSERT INTO bus_record (tenant_id, token, table_id, idempotency_key,"
                " payload_hash, op, payload, event_time, ingested_at, schema_version)"
                " VALUES ('default', %s, %s, %s, %s, %s, %s, NULL, now(), 1)",
                (token, table_id, rec.idempotency_key, rec.payload_hash, rec.op, rec.payload),
            )
        migrations.migrate_up(conn)


async def test_records_written_before_the_upgrade_commit_and_dedupe(
    runtime: Runtime, dsn: str
) -> None:
    rt = runtime
    table = rt.db.call(lambda c: commands.create_table(c, "default", TABLE))
    tid = table.table_id
    old = [_record(tid, f"old{i}", {"id": i, "v": "before"}) for i in range(3)]
    _write_as_before_0003(dsn, tid, old)
    # A retry of an old record is a duplicate with its token; a new one follows.
    out = rt.bus.publish("default", [[old[1], _record(tid, "new", {"id": 9, "v": "after"})]])
    assert out == [[Receipt(2, True), Receipt(4, False)]]
    changed = _record(tid, "old0", {"id": 0, "v": "changed"})
    conflict = rt.bus.publish("default", [[changed]])[0]
    assert isinstance(conflict, DuckMeshError)
    assert conflict.error_code == "IDEMPOTENCY_CONFLICT"
    assert conflict.context["original_token"] == 1
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.watermark == 4
    result = await rt.queries.execute(
        "default", QueryRequest(sql="select id, v from t order by id")
    )
    assert result["rows"] == [[0, "before"], [1, "before"], [2, "before"], [9, "after"]]
