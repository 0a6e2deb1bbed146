"""The query service's warm databases: one per tenant however loads interleave,
and at most ``cache_size`` snapshots loaded in it (real app, Postgres, DuckDB, Parquet)."""

from __future__ import annotations

import trio

from duckmesh.db import connect
from duckmesh.query.service import QueryRequest, QueryService, QuerySettings
from tests.fixtures import EVENTS, LiveServer

TENANT = "default"


async def _snapshots(server: LiveServer, sizes: list[int]) -> list[int]:
    """One visible snapshot per batch; batch ``n`` adds ``sizes[n]`` rows."""
    await server.create_table(EVENTS)
    out, ident = [], 0
    for batch, size in enumerate(sizes):
        records = []
        for _ in range(size):
            records.append({"idempotency_key": f"k{ident}", "payload": {"id": ident}})
            ident += 1
        r = await server.ingest("events", records, wait_for_visibility=True)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "visible", (batch, r.text)
        out.append(r.json()["visible_snapshot_id"])
    return out


async def _loads_waiting_on_lock(server: LiveServer) -> int:
    """Catalog reads of a snapshot's files that wait for a table lock."""
    row = await server.rt.db.run(
        lambda c: c.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%FROM data_file%added_in <=%'"
        ).fetchone(),
        transaction=False,
    )
    assert row is not None
    return int(row[0])


async def test_concurrent_first_queries_of_a_tenant_build_one_database(
    server: LiveServer,
) -> None:
    first, second = await _snapshots(server, [1, 2])
    assert first != second
    assert server.rt.queries.statistics().databases_built == 0
    sql = "select count(*) from events"
    answers: dict[int, object] = {}

    async def ask(snapshot_id: int) -> None:
        r = await server.query(sql, snapshot_id=snapshot_id)
        assert r.status_code == 200, r.text
        answers[snapshot_id] = r.json()["rows"]

    # Hold both first loads in their catalog read of the snapshot's files and
    # release them together, so both find no database for the tenant yet (the
    # old code then built one each across the ``await`` and leaked the first).
    blocker = connect(server.rt.dsn)
    try:
        async with trio.open_nursery() as nursery:
            with blocker.transaction():
                blocker.execute("LOCK TABLE data_file IN ACCESS EXCLUSIVE MODE")
                nursery.start_soon(ask, first)
                nursery.start_soon(ask, second)
                with trio.fail_after(20):
                    while await _loads_waiting_on_lock(server) < 2:
                        await trio.sleep(0.01)
    finally:
        blocker.close()
    assert answers == {first: [[1]], second: [[3]]}
    stats = server.rt.queries.statistics()
    assert stats.databases_built == 1
    assert stats.tenant_databases.size == 1
    assert stats.loaded_snapshots == 2
    # Both snapshots stay served by that one database: no further build.
    for snapshot_id, rows in ((first, [[1]]), (second, [[3]])):
        r = await server.query(sql, snapshot_id=snapshot_id)
        assert r.json()["rows"] == rows
    assert server.rt.queries.statistics().databases_built == 1


async def test_least_recent_snapshot_schema_is_dropped_past_cache_size(
    server: LiveServer,
) -> None:
    snapshots = await _snapshots(server, [1, 1, 1])
    rt = server.rt
    service = QueryService(rt.db, rt.bus, rt.store, rt.notifications, QuerySettings(cache_size=2))
    try:

        async def count(snapshot_id: int) -> object:
            out = await service.execute(
                TENANT, QueryRequest("select count(*) from events", snapshot_id=snapshot_id)
            )
            return out["rows"]

        assert await count(snapshots[0]) == [[1]]
        assert await count(snapshots[1]) == [[2]]
        assert await count(snapshots[0]) == [[1]]  # now the most recent of the two
        assert service.statistics().loaded_snapshots == 2
        # A third snapshot pushes out the least recent one (snapshots[1]): its
        # schema is dropped from the tenant's database, the others stay.
        assert await count(snapshots[2]) == [[3]]
        stats = service.statistics()
        assert stats.loaded_snapshots == 2
        assert stats.databases_built == 1
        # The dropped one loads again on demand and answers the same.
        assert await count(snapshots[1]) == [[2]]
        assert service.statistics().loaded_snapshots == 2
        assert service.statistics().databases_built == 1
    finally:
        service.close()
    assert service.statistics().tenant_databases.size == 0
