"""The result cache (issue 20): an answer is reused only for the same tenant,
snapshot, SQL, parameters and roles, and a new snapshot is read afresh
(real app, Postgres, DuckDB, Parquet)."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import bearer, create_tenant, issue_key
from tests.fixtures import EVENTS, LiveServer, StartApp

SQL = "select count(*) as n, sum(id) as s from events where id >= ?"


async def _ingest(srv: LiveServer, key: str, ids: range) -> int:
    records = [{"idempotency_key": f"k{i}", "payload": {"id": i}} for i in ids]
    r = await srv.client.post("/v1/ingest/events", json={"records": records}, headers=bearer(key))
    assert r.status_code == 200, r.text
    token: int = r.json()["max_visibility_token"]
    return token


async def _ask(srv: LiveServer, key: str, sql: str = SQL, **kw: Any) -> dict[str, Any]:
    if "min_visibility_token" in kw:  # a loaded machine may take seconds to publish
        kw["consistency_timeout_ms"] = 30_000
    r = await srv.client.post(
        "/v1/query", json={"sql": sql, "params": [0], **kw}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_cached_only_for_same_tenant_snapshot_sql_params_and_roles(
    start_app: StartApp,
) -> None:
    srv = await start_app()
    for tenant in ("cache-a", "cache-b"):
        await create_tenant(srv.rt, tenant)
    _, a_key = await issue_key(srv.rt, "cache-a", ["query_reader", "ingest_writer", "table_admin"])
    _, a_reader = await issue_key(srv.rt, "cache-a", ["query_reader"])
    _, b_key = await issue_key(srv.rt, "cache-b", ["query_reader", "ingest_writer", "table_admin"])
    for key in (a_key, b_key):
        r = await srv.client.post("/v1/tables", json=EVENTS, headers=bearer(key))
        assert r.status_code == 201, r.text
    a_token = await _ingest(srv, a_key, range(3))
    b_token = await _ingest(srv, b_key, range(5))

    first = await _ask(srv, a_key, min_visibility_token=a_token)
    assert first["stats"]["cached"] is False
    assert first["rows"] == [[3, 3]]
    again = await _ask(srv, a_key)
    assert again["stats"]["cached"] is True
    assert again["rows"] == first["rows"]
    assert again["snapshot_id"] == first["snapshot_id"]
    # Different parameters, SQL text, row limit, roles or tenant: run again.
    r = await srv.client.post("/v1/query", json={"sql": SQL, "params": [1]}, headers=bearer(a_key))
    assert r.json()["stats"]["cached"] is False
    assert r.json()["rows"] == [[2, 3]]
    assert (await _ask(srv, a_key, SQL + " ")).get("stats", {})["cached"] is False
    assert (await _ask(srv, a_key, row_limit=5))["stats"]["cached"] is False
    assert (await _ask(srv, a_reader))["stats"]["cached"] is False
    other = await _ask(srv, b_key, min_visibility_token=b_token)
    assert other["stats"]["cached"] is False
    assert other["rows"] == [[5, 10]]
    # An older snapshot named explicitly is its own entry.
    assert (await _ask(srv, a_key, snapshot_id=first["snapshot_id"]))["stats"]["cached"] is True

    # A new snapshot: the same query runs again and sees the new rows.
    a_token = await _ingest(srv, a_key, range(3, 7))
    fresh = await _ask(srv, a_key, min_visibility_token=a_token)
    assert fresh["snapshot_id"] != first["snapshot_id"]
    assert fresh["stats"]["cached"] is False
    assert fresh["rows"] == [[7, 21]]
    assert (await _ask(srv, a_key))["stats"]["cached"] is True
    stats = srv.rt.queries.statistics().result_cache
    assert stats.hits == 3
    assert 0 < stats.bytes <= stats.max_bytes
    metrics = (await srv.client.get("/v1/metrics")).text
    assert 'duckmesh_query_result_cache_lookups_total{outcome="hit"}' in metrics
    assert "duckmesh_query_result_cache_bytes " in metrics


async def test_zero_bytes_disables_the_cache(start_app: StartApp) -> None:
    srv = await start_app(query_result_cache_bytes=0)
    await srv.create_table(EVENTS)
    token = await _ingest(srv, srv.key, range(2))
    for _ in range(2):
        body = await _ask(srv, srv.key, min_visibility_token=token)
        assert body["stats"]["cached"] is False
        assert body["rows"] == [[2, 1]]
