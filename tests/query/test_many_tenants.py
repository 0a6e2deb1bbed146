"""Many tenants in one query plane (issue 20): every answer is the asking
tenant's own, however many tenants share the process and its DuckDB engine,
and no tenant's SQL reaches another tenant's files by any file-reading
construct the checker knows (real app, Postgres, DuckDB, Parquet)."""

from __future__ import annotations

from typing import Any

import trio

from duckmesh.catalog import reads
from duckmesh.query._functions import REFUSED_TABLE_FUNCTIONS
from tests.api.helpers import assert_error, bearer, create_tenant, issue_key
from tests.fixtures import LiveServer, StartApp

TABLE = {"name": "ev", "columns": [{"name": "id", "type": "BIGINT"}]}
ROLES = ["query_reader", "ingest_writer", "table_admin"]


async def _tenants(srv: LiveServer, count: int) -> list[tuple[str, str, int]]:
    """(tenant, key, token) for ``count`` tenants; tenant ``n`` holds ids 0..n."""
    out: list[tuple[str, str, int]] = [("", "", 0)] * count

    async def make(n: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            tenant = f"many-{n:03d}"
            await create_tenant(srv.rt, tenant)
            _, key = await issue_key(srv.rt, tenant, ROLES)
            r = await srv.client.post("/v1/tables", json=TABLE, headers=bearer(key))
            assert r.status_code == 201, r.text
            records = [{"idempotency_key": f"k{i}", "payload": {"id": i}} for i in range(n + 1)]
            r = await srv.client.post(
                "/v1/ingest/ev", json={"records": records}, headers=bearer(key)
            )
            assert r.status_code == 200, r.text
            out[n] = (tenant, key, r.json()["max_visibility_token"])

    limiter = trio.CapacityLimiter(16)
    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(make, n, limiter)
    return out


async def _ask(srv: LiveServer, key: str, sql: str, **kw: Any) -> Any:
    r = await srv.client.post("/v1/query", json={"sql": sql, **kw}, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["rows"]


async def test_many_tenants_round_robin_each_answer_is_its_own(start_app: StartApp) -> None:
    # 120 tenants keep the test to seconds (scenarios/bench_tenants.py runs
    # 1,000). Fewer warm databases than tenants: the round-robin also closes
    # and rebuilds databases in the shared engine while others are queried.
    srv = await start_app(query_max_databases=80, query_result_cache_bytes=0)
    tenants = await _tenants(srv, 120)
    sql = "select count(*), sum(id) from ev"

    async def client(offset: int) -> None:
        # 8 clients, round-robin, two rounds: the first builds every database
        # (waiting for the tenant's data), the second finds most of them warm.
        for i in range(offset, len(tenants) * 2, 8):
            n = i % len(tenants)
            _, key, token = tenants[n]
            rows = await _ask(
                srv, key, sql, min_visibility_token=token, consistency_timeout_ms=60_000
            )
            assert rows == [[n + 1, n * (n + 1) // 2]], (n, rows)

    async with trio.open_nursery() as nursery:
        for offset in range(8):
            nursery.start_soon(client, offset)
    stats = srv.rt.queries.statistics()
    assert stats.tenant_databases.size == 80
    assert stats.tenant_databases.evictions >= 40
    metrics = (await srv.client.get("/v1/metrics")).text
    assert "duckmesh_query_databases 80.0" in metrics
    assert "duckmesh_process_threads " in metrics


def _file_constructs(path: str) -> list[str]:
    """Every way the checker knows to name a file, with ``path`` in it."""
    functions = sorted(REFUSED_TABLE_FUNCTIONS["files"][1])
    sqls = [f"SELECT * FROM {fn}('{path}')" for fn in functions]
    sqls += [f"SELECT 1 WHERE EXISTS (SELECT * FROM {fn}('{path}'))" for fn in functions]
    sqls += [f"WITH x AS (SELECT * FROM {fn}(['{path}'])) SELECT * FROM x" for fn in functions]
    sqls += [
        f"SELECT * FROM '{path}'",
        f'SELECT * FROM "{path}"',
        f"SELECT * FROM ev, '{path}'",
        f"ATTACH '{path}' AS stolen",
        f"COPY ev FROM '{path}'",
        f"CREATE VIEW stolen AS SELECT * FROM read_parquet('{path}')",
        f"IMPORT DATABASE '{path}'",
        f"INSTALL '{path}'",
        f"LOAD '{path}'",
    ]
    return sqls


async def test_no_tenant_reaches_another_tenants_files(start_app: StartApp) -> None:
    srv = await start_app()
    tenants = await _tenants(srv, 2)
    paths: dict[str, list[str]] = {}
    for tenant, key, token in tenants:
        # Each database warm (and the tenant's files published).
        await _ask(srv, key, "select 1", min_visibility_token=token, consistency_timeout_ms=60_000)

        def files(c: Any, tenant: str = tenant) -> list[str]:
            snap = reads.latest_snapshot(c, tenant)
            assert snap is not None
            return [f.path for f in reads.snapshot_files(c, tenant, snap.snapshot_id)]

        keys = await srv.rt.db.run(files, transaction=False)
        directory = srv.rt.store.directory(tenant)
        paths[tenant] = [
            *(str(srv.rt.store.local_path(k)) for k in keys),
            f"{directory}/**/*.parquet",
            f"{directory}/../{tenant}/**",
        ]
        assert keys
    tried = 0
    for tenant, key, _ in tenants:
        for other, other_paths in paths.items():
            if other == tenant:
                continue
            for path in other_paths:
                for sql in _file_constructs(path):
                    r = await srv.client.post("/v1/query", json={"sql": sql}, headers=bearer(key))
                    assert_error(r, 400, "SQL_REJECTED")
                    tried += 1
    assert tried >= 2 * 3 * 100
    # Each tenant still reads exactly its own rows.
    for n, (_, key, _) in enumerate(tenants):
        assert await _ask(srv, key, "select count(*) from ev") == [[n + 1]]


async def test_per_tenant_engines_when_sharing_is_off(start_app: StartApp) -> None:
    srv = await start_app(query_shared_engine=False)
    tenants = await _tenants(srv, 2)
    for n, (_, key, token) in enumerate(tenants):
        rows = await _ask(
            srv,
            key,
            "select count(*) from ev",
            min_visibility_token=token,
            consistency_timeout_ms=60_000,
        )
        assert rows == [[n + 1]]
    assert srv.rt.queries._databases._engine is None  # each tenant has its own instance
