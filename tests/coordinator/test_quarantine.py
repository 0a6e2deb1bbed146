"""Records that can never be committed are set aside with a reason, never
dropped silently and never blocking their tenant; other tenants go on."""

from __future__ import annotations

import hashlib
import json

import trio

from duckmesh.bus import IngestRecord
from duckmesh.catalog import commands
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, coordinator_actors


def _record(table_id: str, key: str, payload: dict[str, object]) -> IngestRecord:
    text = json.dumps(payload)
    return IngestRecord(
        table_id, key, "insert", text, hashlib.sha256(text.encode()).digest(), None, 1
    )


async def test_unknown_table_is_quarantined_and_the_rest_commits(runtime: Runtime) -> None:
    rt = runtime
    table = rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "ok", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    rt.db.call(lambda c: commands.create_tenant(c, "other"))
    other = rt.db.call(
        lambda c: commands.create_table(
            c, "other", {"name": "ok", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    # Written straight to the bus: a record for a table the catalog never had.
    rt.bus.publish(
        "default",
        [
            [
                _record(table.table_id, "a", {"id": 1}),
                _record("ghost-table", "b", {"id": 2}),
                _record(table.table_id, "c", {"id": 3}),
            ]
        ],
    )
    rt.bus.publish("other", [[_record(other.table_id, "a", {"id": 9})]])
    committer = coordinator_actors(rt)[0].committer
    outcomes = []
    while (outcome := await trio.to_thread.run_sync(committer.commit_once)) is not None:
        outcomes.append(outcome)
    by_tenant = {o.tenant_id: o for o in outcomes}
    assert by_tenant["default"].quarantined == 1
    assert by_tenant["default"].watermark == 3  # the tenant is not blocked
    assert by_tenant["other"].watermark == 1
    rows = rt.db.call(
        lambda c: c.execute(
            "SELECT tenant_id, token, table_id, reason FROM bus_quarantine"
        ).fetchall()
    )
    assert rows == [("default", 2, "ghost-table", "table not found")]
    result = await rt.queries.execute("default", QueryRequest(sql="select id from ok order by 1"))
    assert result["rows"] == [[1], [3]]
    result = await rt.queries.execute("other", QueryRequest(sql="select id from ok"))
    assert result["rows"] == [[9]]


async def test_records_of_a_dropped_table_are_acknowledged_not_written(
    runtime: Runtime,
) -> None:
    rt = runtime
    table = rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "gone", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    rt.bus.publish("default", [[_record(table.table_id, "a", {"id": 1})]])
    rt.db.call(lambda c: commands.drop_table(c, "default", "gone"))
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.files == 0
    assert outcome.quarantined == 0
    assert outcome.watermark == 1
