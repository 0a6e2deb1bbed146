"""Authentication and authorisation over real HTTP (SPEC §4, §7).

Keys: both header forms, revocation and disabled tenants take effect in the
running process, roles deny by default, the tenant comes from the key only,
and no plaintext key is ever stored in Postgres or written to the logs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from psycopg import sql

from duckmesh.auth import hash_key
from duckmesh.catalog import commands
from duckmesh.catalog.model import ROLES
from duckmesh.runtime import Runtime
from tests.api.helpers import assert_error, bearer, create_tenant, eventually, issue_key
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ORDERS, LiveServer


@pytest.fixture
async def anon(server: LiveServer) -> Any:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        yield client


# -- presenting a key --------------------------------------------------------------


async def test_missing_key_is_401(anon: httpx.AsyncClient) -> None:
    body = assert_error(await anon.get("/v1/tables"), 401, "UNAUTHENTICATED")
    assert "Bearer" in body["message"]
    assert "X-API-Key" in body["message"]


INVALID_KEY_HEADERS = [
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer not-a-key"},
    {"Authorization": f"Bearer {BOOTSTRAP_KEY}x"},
    {"Authorization": f"Bearer {BOOTSTRAP_KEY[:-1]}"},
    {"Authorization": f"Bearer {BOOTSTRAP_KEY.upper()}"},
    {"Authorization": f"Basic {BOOTSTRAP_KEY}"},
    {"Authorization": BOOTSTRAP_KEY},
    {"X-API-Key": ""},
    {"X-API-Key": "dmk_" + "A" * 43},
    {"X-API-Key": f"Bearer {BOOTSTRAP_KEY}"},
]


async def test_invalid_key_is_401(anon: httpx.AsyncClient) -> None:
    for headers in INVALID_KEY_HEADERS:
        for _ in range(2):  # the second time from the authenticator's negative cache
            r = await anon.get("/v1/tables", headers=headers)
            assert r.status_code == 401, headers
            assert_error(r, 401, "UNAUTHENTICATED")


async def test_both_header_forms_work(anon: httpx.AsyncClient) -> None:
    for headers in [
        {"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
        {"Authorization": f"bearer {BOOTSTRAP_KEY}"},
        {"Authorization": f"BEARER  {BOOTSTRAP_KEY}"},
        {"X-API-Key": BOOTSTRAP_KEY},
        {"x-api-key": BOOTSTRAP_KEY},
    ]:
        r = await anon.get("/v1/tables", headers=headers)
        assert r.status_code == 200, (headers, r.text)


async def test_x_api_key_works_for_writes(server: LiveServer, anon: httpx.AsyncClient) -> None:
    _, key = await issue_key(server.rt, "default", ["table_admin", "ingest_writer", "query_reader"])
    h = {"X-API-Key": key}
    assert (await anon.post("/v1/tables", headers=h, json=EVENTS)).status_code == 201
    r = await anon.post(
        "/v1/ingest/events",
        headers=h,
        json={
            "records": [{"idempotency_key": "a", "payload": {"id": 1}}],
            "wait_for_visibility": True,
            "visibility_timeout_ms": 10_000,
        },
    )
    assert r.status_code == 200, r.text
    r = await anon.post("/v1/query", headers=h, json={"sql": "select id from events"})
    assert r.json()["rows"] == [[1]], r.text


async def test_bearer_takes_precedence_over_x_api_key(
    server: LiveServer, anon: httpx.AsyncClient
) -> None:
    _, reader = await issue_key(server.rt, "default", ["query_reader"])
    r = await anon.get("/v1/lag", headers={**bearer(reader), "X-API-Key": BOOTSTRAP_KEY})
    assert_error(r, 403, "FORBIDDEN")
    r = await anon.get(
        "/v1/lag", headers={"Authorization": "Bearer bad", "X-API-Key": BOOTSTRAP_KEY}
    )
    assert_error(r, 401, "UNAUTHENTICATED")


# -- revocation and disabled tenants ----------------------------------------------


async def test_revoked_key_is_401_in_the_running_process(
    server: LiveServer, anon: httpx.AsyncClient
) -> None:
    key_id, key = await issue_key(server.rt, "default", ["query_reader"])
    _, other = await issue_key(server.rt, "default", ["query_reader"])
    for k in (key, other):  # both now in the authenticator's cache
        assert (await anon.get("/v1/tables", headers=bearer(k))).status_code == 200
    await server.rt.db.run(lambda c: commands.revoke_key(c, key_id, actor="test"))

    async def rejected() -> bool:
        r = await anon.get("/v1/tables", headers=bearer(key))
        return r.status_code == 401

    await eventually(rejected, timeout=5)
    assert_error(await anon.get("/v1/tables", headers=bearer(key)), 401, "UNAUTHENTICATED")
    assert_error(await anon.get("/v1/tables", headers={"X-API-Key": key}), 401, "UNAUTHENTICATED")
    assert (await anon.get("/v1/tables", headers=bearer(other))).status_code == 200


async def test_disabled_tenant_is_401(server: LiveServer, anon: httpx.AsyncClient) -> None:
    await create_tenant(server.rt, "t2")
    _, key = await issue_key(server.rt, "t2", list(ROLES))
    assert (await anon.get("/v1/tables", headers=bearer(key))).status_code == 200
    await server.rt.db.run(lambda c: commands.disable_tenant(c, "t2", actor="test"))

    async def rejected() -> bool:
        r = await anon.get("/v1/tables", headers=bearer(key))
        return r.status_code == 401

    await eventually(rejected, timeout=5)
    for method, path in [("GET", "/v1/lag"), ("POST", "/v1/tables"), ("POST", "/v1/query")]:
        r = await anon.request(method, path, headers=bearer(key), json={"sql": "select 1"})
        assert_error(r, 401, "UNAUTHENTICATED")
    # A key issued after the tenant was disabled is no better.
    _, late = await issue_key(server.rt, "t2", list(ROLES))
    assert_error(await anon.get("/v1/tables", headers=bearer(late)), 401, "UNAUTHENTICATED")
    # Other tenants are unaffected.
    assert (await server.client.get("/v1/tables")).status_code == 200


# -- roles -------------------------------------------------------------------------


async def test_query_reader_cannot_ingest(server: LiveServer, anon: httpx.AsyncClient) -> None:
    await server.create_table(EVENTS)
    _, key = await issue_key(server.rt, "default", ["query_reader"])
    r = await anon.post(
        "/v1/ingest/events",
        headers=bearer(key),
        json={"records": [{"idempotency_key": "a", "payload": {"id": 1}}]},
    )
    body = assert_error(r, 403, "FORBIDDEN")
    assert body["context"] == {"required_roles": ["ingest_writer"]}
    lag = (await server.client.get("/v1/lag")).json()
    assert lag["latest_token"] == 0, lag  # nothing was written
    r = await anon.post("/v1/query", headers=bearer(key), json={"sql": "select 1 as x"})
    assert r.status_code == 200, r.text


async def test_lag_needs_ops_admin(server: LiveServer, anon: httpx.AsyncClient) -> None:
    _, others = await issue_key(
        server.rt, "default", ["ingest_writer", "query_reader", "table_admin"]
    )
    body = assert_error(await anon.get("/v1/lag", headers=bearer(others)), 403, "FORBIDDEN")
    assert body["context"] == {"required_roles": ["ops_admin"]}
    _, ops = await issue_key(server.rt, "default", ["ops_admin"])
    r = await anon.get("/v1/lag", headers=bearer(ops))
    assert r.status_code == 200, r.text
    assert set(r.json()) >= {"latest_token", "visible_watermark", "pending_records"}


async def test_ops_admin_alone_cannot_touch_data(
    server: LiveServer, anon: httpx.AsyncClient
) -> None:
    await server.create_table(EVENTS)
    _, ops = await issue_key(server.rt, "default", ["ops_admin"])
    h = bearer(ops)
    for method, path, body in [
        (
            "POST",
            "/v1/ingest/events",
            {"records": [{"idempotency_key": "a", "payload": {"id": 1}}]},
        ),
        ("POST", "/v1/query", {"sql": "select * from events"}),
        ("GET", "/v1/tables", None),
        ("POST", "/v1/tables", ORDERS),
        ("DELETE", "/v1/tables/events", None),
        ("GET", "/v1/snapshots", None),
        ("POST", "/v1/snapshots/pin", {"snapshot_id": 1}),
    ]:
        r = await anon.request(method, path, headers=h, json=body)
        assert_error(r, 403, "FORBIDDEN")
    assert (await server.client.get("/v1/tables/events")).status_code == 200


async def test_tenant_comes_from_the_key_not_from_headers(
    server: LiveServer, anon: httpx.AsyncClient
) -> None:
    await create_tenant(server.rt, "t2")
    _, t2 = await issue_key(server.rt, "t2", list(ROLES))
    assert (await anon.post("/v1/tables", headers=bearer(t2), json=EVENTS)).status_code == 201
    for headers in ({"X-Tenant-Id": "t2"}, {"X-Tenant": "t2"}, {"Tenant": "t2"}):
        r = await server.client.get("/v1/tables", headers=headers, params={"tenant": "t2"})
        assert r.json() == {"tables": []}, r.text
        assert_error(
            await server.client.get("/v1/tables/events", headers=headers), 404, "TABLE_NOT_FOUND"
        )


# -- secrets at rest and in logs -----------------------------------------------------

TEXT_TYPES = (
    "text",
    "character varying",
    "character",
    "json",
    "jsonb",
    "ARRAY",
    "name",
    "USER-DEFINED",
)


def _find_in_catalog(dsn: str, needles: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, needle) for every text-like column holding a needle."""
    found = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_schema, table_name, column_name, data_type"
            " FROM information_schema.columns c JOIN information_schema.tables t"
            " USING (table_schema, table_name)"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " AND t.table_type = 'BASE TABLE'"
        ).fetchall()
        assert columns
        searched = 0
        for schema, table, column, data_type in columns:
            ident = sql.Identifier(schema, table)
            col = sql.Identifier(column)
            if data_type in TEXT_TYPES:
                expr = sql.SQL("{}::text").format(col)
            elif data_type == "bytea":
                expr = sql.SQL("encode({}, 'escape')").format(col)
            else:
                continue
            searched += 1
            for needle in needles:
                query = sql.SQL("SELECT 1 FROM {} WHERE strpos({}, %s) > 0 LIMIT 1").format(
                    ident, expr
                )
                if conn.execute(query, (needle,)).fetchone():
                    found.append((table, column, needle))
        assert searched > 5, columns
    return found


@pytest.fixture
def all_logs() -> Iterator[tuple[list[MutableMapping[str, Any]], io.StringIO]]:
    """Every structlog event (with its bound context) and every stdlib log line."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as entries:
            yield entries, buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_no_plaintext_key_in_postgres_or_logs(
    server: LiveServer,
    runtime: Runtime,
    anon: httpx.AsyncClient,
    all_logs: tuple[list[dict[str, Any]], io.StringIO],
    capfd: pytest.CaptureFixture[str],
) -> None:
    entries, stdlib = all_logs
    await create_tenant(runtime, "t2")
    key_id, key = await issue_key(runtime, "default", list(ROLES))
    revoked_id, revoked = await issue_key(runtime, "default", ["query_reader"])
    _, t2_key = await issue_key(runtime, "t2", ["table_admin", "ingest_writer"])
    _, reader = await issue_key(runtime, "default", ["query_reader"])
    keys = [BOOTSTRAP_KEY, key, revoked, t2_key, reader]

    # Use them: successes, writes (whose events record the actor), failures.
    assert (await anon.post("/v1/tables", headers=bearer(key), json=EVENTS)).status_code == 201
    assert (
        await anon.post("/v1/tables", headers={"X-API-Key": t2_key}, json=ORDERS)
    ).status_code == 201
    r = await anon.post(
        "/v1/ingest/events",
        headers=bearer(key),
        json={"records": [{"idempotency_key": "a", "payload": {"id": 1}}]},
    )
    assert r.status_code == 200, r.text
    assert_error(
        await anon.post(
            "/v1/ingest/events",
            headers=bearer(reader),
            json={"records": [{"idempotency_key": "b", "payload": {"id": 2}}]},
        ),
        403,
        "FORBIDDEN",
    )
    await runtime.db.run(lambda c: commands.revoke_key(c, revoked_id, actor="test"))

    async def revoked_rejected() -> bool:
        return (await anon.get("/v1/tables", headers=bearer(revoked))).status_code == 401

    await eventually(revoked_rejected)
    bad_keys = [key + "x", "dmk_wrong_" + key[10:]]
    for bad in bad_keys:
        assert_error(await anon.get("/v1/tables", headers=bearer(bad)), 401, "UNAUTHENTICATED")
        assert_error(
            await anon.post("/v1/query", headers={"X-API-Key": bad}, json={}),
            401,
            "UNAUTHENTICATED",
        )
    r = await anon.post("/v1/tables", headers=bearer(key), content=b"{" + key.encode())
    assert_error(r, 400, "BAD_REQUEST")

    # Postgres: no plaintext, no bearer string, in any text-like column.
    needles = keys + bad_keys + [f"Bearer {k}" for k in keys]
    assert _find_in_catalog(runtime.dsn, needles) == []
    # The search would find a stored value: the key ids and hashes are there.
    assert _find_in_catalog(runtime.dsn, [key_id, hash_key(key)]), "search found nothing"

    # Logs: the failures were logged (so the capture works) and no key is in them.
    assert any(e.get("error_code") == "UNAUTHENTICATED" for e in entries), entries
    text = repr(entries) + stdlib.getvalue() + "".join(capfd.readouterr())
    for secret in keys + bad_keys:
        assert secret not in text
        assert secret[4:20] not in text  # not even a fragment
