"""The consistency matrix of SPEC §3, through real HTTP.

Strict write-read under load, across a coordinator restart, concurrent
tenants, duplicates and retries, timeouts, time-travel reproducibility, and
mode B (wait_for_visibility).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from duckmesh.catalog import commands
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ORDERS, LiveServer, ServerProcess


async def test_strict_write_read_under_load(server: LiveServer) -> None:
    """Mode A: every writer sees its own write in the query that asks for its token."""
    await server.create_table(EVENTS)
    misses: list[int] = []
    checked = 0

    async def writer(w: int) -> None:
        nonlocal checked
        for i in range(15):
            ident = w * 1000 + i
            r = await server.ingest(
                "events", [{"idempotency_key": f"k{ident}", "payload": {"id": ident, "kind": "w"}}]
            )
            assert r.status_code == 200, r.text
            token = r.json()["max_visibility_token"]
            q = await server.query(
                f"select count(*) from events where id = {ident}", min_visibility_token=token
            )
            assert q.status_code == 200, q.text
            assert q.json()["max_visibility_token"] >= token
            if q.json()["rows"] != [[1]]:
                misses.append(ident)
            checked += 1

    async with trio.open_nursery() as nursery:
        for w in range(8):
            nursery.start_soon(writer, w)
    assert checked == 120
    assert misses == []


async def test_concurrent_tenants_are_isolated(server: LiveServer) -> None:
    rt = server.rt
    rt.db.call(lambda c: commands.create_tenant(c, "t2"))
    _, key2 = rt.db.call(
        lambda c: commands.issue_key(c, "t2", ["ingest_writer", "query_reader", "table_admin"])
    )
    other = httpx.AsyncClient(base_url=server.base_url, headers=server.headers(key2))
    try:
        assert (await other.post("/v1/tables", json=EVENTS)).status_code == 201
        await server.create_table(EVENTS)

        async def write(client: httpx.AsyncClient, base: int, out: list[int]) -> None:
            for i in range(20):
                r = await client.post(
                    "/v1/ingest/events",
                    json={"records": [{"idempotency_key": f"k{i}", "payload": {"id": base + i}}]},
                )
                assert r.status_code == 200, r.text
                out.append(r.json()["max_visibility_token"])

        tokens1: list[int] = []
        tokens2: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, server.client, 0, tokens1)
            nursery.start_soon(write, other, 1000, tokens2)
        # Each tenant has its own gapless token sequence.
        assert sorted(tokens1) == list(range(1, 21))
        assert sorted(tokens2) == list(range(1, 21))
        q1 = (
            await server.query(
                "select min(id), max(id), count(*) from events", min_visibility_token=20
            )
        ).json()
        q2 = (
            await other.post(
                "/v1/query",
                json={
                    "sql": "select min(id), max(id), count(*) from events",
                    "min_visibility_token": 20,
                },
            )
        ).json()
        assert q1["rows"] == [[0, 19, 20]]
        assert q2["rows"] == [[1000, 1019, 20]]
    finally:
        await other.aclose()


async def test_duplicates_and_retries_return_the_original_token(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    rec = {"idempotency_key": "o-1", "op": "upsert", "payload": {"order_id": 1, "status": "new"}}
    first = (await server.ingest("orders", [rec])).json()
    retry = (await server.ingest("orders", [rec])).json()
    assert retry["max_visibility_token"] == first["max_visibility_token"]
    assert retry["duplicate_count"] == 1
    assert retry["accepted_count"] == 0
    assert retry["status"] == "partial_duplicate"
    q = await server.query(
        "select count(*) from orders", min_visibility_token=retry["max_visibility_token"]
    )
    assert q.json()["rows"] == [[1]]
    conflict = await server.ingest(
        "orders", [dict(rec, payload={"order_id": 1, "status": "other"})]
    )
    assert conflict.status_code == 409
    assert conflict.json()["error_code"] == "IDEMPOTENCY_CONFLICT"


async def test_token_above_issued_is_invalid(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    r = await server.query("select 1", min_visibility_token=5)
    assert r.status_code == 400
    body = r.json()
    assert body["error_code"] == "VISIBILITY_TOKEN_INVALID"
    assert body["context"]["latest_issued_token"] == 0


async def test_time_travel_is_reproducible(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    r = await server.ingest(
        "orders",
        [
            {
                "idempotency_key": f"a{i}",
                "op": "upsert",
                "payload": {"order_id": i, "status": "v1", "amount": i * 1.5},
            }
            for i in range(10)
        ],
        wait_for_visibility=True,
    )
    snapshot = r.json()["visible_snapshot_id"]
    sql = "select * from orders order by order_id"
    before = (await server.query(sql, snapshot_id=snapshot)).json()
    # Later writes, deletes and a schema change must not alter the old snapshot's answer.
    await server.ingest(
        "orders",
        [
            {"idempotency_key": f"b{i}", "op": "upsert", "payload": {"order_id": i, "status": "v2"}}
            for i in range(5)
        ]
        + [{"idempotency_key": "del", "op": "delete", "payload": {"order_id": 9}}],
        wait_for_visibility=True,
    )
    evolved = await server.client.patch(
        "/v1/tables/orders", json={"add_columns": [{"name": "note", "type": "VARCHAR"}]}
    )
    assert evolved.status_code == 200, evolved.text
    latest = (await server.query(sql)).json()
    assert latest["snapshot_id"] > snapshot
    assert [c["name"] for c in latest["columns"]][-1] == "note"
    after = (await server.query(sql, snapshot_id=snapshot)).json()
    assert after["rows"] == before["rows"]
    assert after["columns"] == before["columns"]
    assert after["snapshot_id"] == snapshot
    by_time = (await server.query(sql, snapshot_time=before["snapshot_time"])).json()
    assert by_time["snapshot_id"] == snapshot
    assert by_time["rows"] == before["rows"]
    missing = await server.query(sql, snapshot_id=snapshot + 1000)
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "SNAPSHOT_NOT_FOUND"


async def test_mode_b_answers_once_visible(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    r = await server.ingest(
        "events",
        [{"idempotency_key": "x", "payload": {"id": 1}}],
        wait_for_visibility=True,
        visibility_timeout_ms=10_000,
    )
    body = r.json()
    assert body["status"] == "visible"
    assert body["visible_snapshot_id"] is not None
    # Mode C right after: no token, but the snapshot named in the receipt has it.
    q = await server.query("select count(*) from events", snapshot_id=body["visible_snapshot_id"])
    assert q.json()["rows"] == [[1]]


@pytest.mark.slow
def test_timeouts_and_restart_of_the_coordinator(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    """With no coordinator running, barriers time out with the current
    watermark; once a coordinator starts, the same writes become visible,
    and strict reads keep working across a coordinator kill."""
    api = spawn_server()
    api.start(role="api")
    coordinator = spawn_server()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        r = client.post(
            "/v1/ingest/events",
            json={
                "records": [{"idempotency_key": "a", "payload": {"id": 1}}],
                "wait_for_visibility": True,
                "visibility_timeout_ms": 300,
            },
        )
        assert r.status_code == 504
        assert r.json()["error_code"] == "CONSISTENCY_TIMEOUT"
        assert r.json()["context"]["current_watermark"] == 0
        q = client.post(
            "/v1/query",
            json={
                "sql": "select count(*) from events",
                "min_visibility_token": 1,
                "consistency_timeout_ms": 300,
            },
        )
        assert q.status_code == 504
        assert q.json()["retryable"] is True
        # The write stayed accepted: it becomes visible when a coordinator runs.
        coordinator.start(role="coordinator", wait=False)
        q = client.post(
            "/v1/query",
            json={
                "sql": "select count(*) from events",
                "min_visibility_token": 1,
                "consistency_timeout_ms": 30_000,
            },
        )
        assert q.json()["rows"] == [[1]]
        # Strict write-read across a coordinator crash and restart.
        seen: list[Any] = []
        for i in range(2, 12):
            r = client.post(
                "/v1/ingest/events",
                json={"records": [{"idempotency_key": f"k{i}", "payload": {"id": i}}]},
            )
            token = r.json()["max_visibility_token"]
            if i == 5:
                coordinator.kill()
                coordinator.start(role="coordinator", wait=False)
            q = client.post(
                "/v1/query",
                json={
                    "sql": f"select count(*) from events where id = {i}",
                    "min_visibility_token": token,
                    "consistency_timeout_ms": 30_000,
                },
            )
            assert q.status_code == 200, q.text
            seen.append(q.json()["rows"][0][0])
        assert seen == [1] * 10
    coordinator.terminate()
