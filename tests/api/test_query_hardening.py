"""Issue 14 over the real HTTP app: bounded queries (hole 2), the allow-list
(hole 3) and fair tenants (hole 4)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
import trio

from tests.api.helpers import assert_error, bearer, create_tenant, eventually, issue_key
from tests.fixtures import LiveServer, StartApp
from tests.query.test_query_limits import cte_doubling, union_all

# Interruptible and long: counts until the deadline stops it.
SLOW = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"


@pytest.fixture
def start_app(start_app: StartApp) -> StartApp:
    """One DuckDB thread per query, so that slow queries hold their slots."""

    async def start(**overrides: Any) -> LiveServer:
        return await start_app(**{"query_threads": 1, **overrides})

    return start


async def timed_query(srv: LiveServer, sql: str, **kw: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = await srv.query(sql, **kw)
    return r, time.monotonic() - started


async def test_long_and_deep_sql_is_refused_or_stopped_in_time_while_health_answers(
    start_app: StartApp,
) -> None:
    srv = await start_app(query_timeout_ms=2000)
    bound = 2.0 + 1.0  # the acceptance line: within the timeout plus one second
    slow: list[tuple[httpx.Response, float]] = []

    async def run_slow() -> None:
        slow.append(await timed_query(srv, SLOW))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_slow)
        for sql in (
            union_all(8000),  # over 64 KiB
            union_all(2000),  # too many set operations
            cte_doubling(20),  # 2^19 inlined scans
            "SELECT " + "(" * 150 + "1" + ")" * 150,
            "SELECT " + " + ".join(["1"] * 3000),  # a 500 (RecursionError) on the old code
        ):
            r, took = await timed_query(srv, sql)
            body = assert_error(r, 400, "SQL_REJECTED")
            assert took < bound, (took, body)
            assert (await srv.client.get("/v1/health")).status_code == 200
        # The slow query is still running: health answers meanwhile.
        assert not slow
        assert (await srv.client.get("/v1/health")).json() == {"status": "ok"}
    r, took = slow[0]
    body = assert_error(r, 400, "QUERY_TIMEOUT")
    assert body["context"] == {"timeout_s": 2.0}
    assert took < bound


async def test_plan_serialization_attack_is_refused_over_http(start_app: StartApp) -> None:
    srv = await start_app()
    r = await srv.query(
        "SELECT json_serialize_plan('SELECT current_setting(''allowed_directories'') AS x',"
        " optimize := true) AS p"
    )
    body = assert_error(r, 400, "SQL_REJECTED")
    assert body["context"] == {"function": "json_serialize_plan"}
    assert str(srv.rt.config.data_dir) not in r.text


async def test_one_tenant_flooding_queries_does_not_starve_another(start_app: StartApp) -> None:
    srv = await start_app(
        query_timeout_ms=1500,
        query_concurrency=4,
        tenant_query_concurrency=2,
        tenant_query_queue=8,
    )
    await create_tenant(srv.rt, "tenant-b")
    _, key_b = await issue_key(srv.rt, "tenant-b", ["query_reader"])
    statuses: list[int] = []

    async def flood() -> None:
        r = await srv.query(SLOW)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert_error(r, 429, "RATE_LIMITED")

    async with trio.open_nursery() as nursery:
        for _ in range(45):
            nursery.start_soon(flood)
        # 2 running and 8 queued for tenant A; the other 35 are refused at once.
        await eventually(lambda: _count(statuses, 429, 35), timeout=20)
        r = await srv.client.post(
            "/v1/query", json={"sql": "SELECT 42 AS answer"}, headers=bearer(key_b)
        )
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [[42]]
        assert len(statuses) < 45  # tenant A's queries were still running
    assert statuses.count(429) == 35
    assert statuses.count(400) == 10  # each admitted one ran until its timeout


def _count(statuses: list[int], status: int, n: int) -> Awaitable[bool]:
    async def check() -> bool:
        return statuses.count(status) >= n

    return check()


async def test_query_rate_quota_is_per_tenant_with_retry_after(start_app: StartApp) -> None:
    srv = await start_app(tenant_query_rate=1)
    await create_tenant(srv.rt, "tenant-b")
    _, key_b = await issue_key(srv.rt, "tenant-b", ["query_reader"])
    assert (await srv.query("SELECT 1")).status_code == 200
    r = await srv.query("SELECT 1")
    body = assert_error(r, 429, "QUOTA_EXCEEDED")
    assert body["context"]["limit_queries_per_s"] == 1
    assert int(r.headers["Retry-After"]) >= 1
    # Tenant B has its own bucket.
    r = await srv.client.post("/v1/query", json={"sql": "SELECT 2"}, headers=bearer(key_b))
    assert r.status_code == 200, r.text


async def test_query_is_answered_at_the_deadline_even_when_duckdb_cannot_be_interrupted(
    start_app: StartApp,
) -> None:
    srv = await start_app(query_timeout_ms=300, max_request_bytes=64 << 20)
    # DuckDB converts parameters before it looks at interrupts: seconds for this list.
    content = json.dumps({"sql": "SELECT len(?) AS n", "params": [[0] * 8_000_000]}).encode()
    started = time.monotonic()
    r = await srv.client.post(
        "/v1/query", content=content, headers={"Content-Type": "application/json"}
    )
    took = time.monotonic() - started
    assert_error(r, 400, "QUERY_TIMEOUT")
    # Without the deadline answer this took over 5 s. The bound leaves 3 s for
    # sending and parsing the 16 MB body on a loaded 2-core machine.
    assert took < 0.3 + 3.0, took
    # The abandoned thread holds only its own slots: other queries still run.
    r = await srv.query("SELECT 1 AS one")
    assert r.status_code == 200, r.text
