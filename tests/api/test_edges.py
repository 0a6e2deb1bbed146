"""Hostile input at the API edge: every one is a clear 4xx, never a 500 and
never half-applied (non-finite JSON numbers, nesting deep enough to exhaust
the stack, reserved table names, a key reused inside one request, integers
past BIGINT), and readiness does not echo data from error messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from duckmesh.api.http import MAX_JSON_DEPTH
from duckmesh.catalog.types import MAX_TYPE_DEPTH, RESERVED_TABLE_PREFIXES
from duckmesh.supervisors import FunctionActor, RestartPolicy, Supervisor
from tests.api.helpers import assert_error, eventually
from tests.api.test_errors import JSON_ENDPOINTS
from tests.fixtures import EVENTS, ORDERS, LiveServer

JSON_HEADERS = {"Content-Type": "application/json"}
BIGINT_MAX = 2**63 - 1


async def _post_raw(server: LiveServer, method: str, path: str, content: bytes) -> Any:
    return await server.client.request(method, path, content=content, headers=JSON_HEADERS)


# -- NaN / Infinity ------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_literals_are_refused(server: LiveServer, literal: str) -> None:
    await server.create_table(EVENTS)
    record = f'{{"idempotency_key": "a", "payload": {{"id": 1, "value": {literal}}}}}'
    r = await _post_raw(server, "POST", "/v1/ingest/events", f'{{"records": [{record}]}}'.encode())
    body = assert_error(r, 400, "BAD_REQUEST")
    assert literal.lstrip("-") in body["message"]
    for method, path in JSON_ENDPOINTS:
        r = await _post_raw(server, method, path, f'{{"x": {literal}}}'.encode())
        assert_error(r, 400, "BAD_REQUEST")
    # Nothing was written.
    assert (await server.client.get("/v1/lag")).json()["latest_token"] == 0


# -- nesting -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS)
async def test_deeply_nested_body_is_400(server: LiveServer, method: str, path: str) -> None:
    await server.create_table(EVENTS)
    for depth in (100_000, MAX_JSON_DEPTH + 1):
        content = b'{"records": ' + b"[" * depth + b"]" * depth + b"}"
        body = assert_error(await _post_raw(server, method, path, content), 400, "BAD_REQUEST")
        assert body["context"] == {"max_depth": MAX_JSON_DEPTH}, body
        assert "deeper" in body["message"]


async def test_json_column_value_nesting_within_the_bound_is_accepted(server: LiveServer) -> None:
    columns = [{"name": "doc", "type": "JSON"}, {"name": "id", "type": "INT"}]
    await server.create_table({"name": "docs", "columns": columns})

    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    # body -> records -> record -> payload -> value: the value gets the rest.
    fits = MAX_JSON_DEPTH - 4
    ok = await server.ingest("docs", [{"idempotency_key": "a", "payload": {"doc": nested(fits)}}])
    assert ok.status_code == 200, ok.text
    deep = await server.ingest(
        "docs", [{"idempotency_key": "b", "payload": {"doc": nested(fits + 1)}}]
    )
    assert_error(deep, 400, "BAD_REQUEST")
    assert (await server.client.get("/v1/lag")).json()["latest_token"] == 1


@pytest.mark.parametrize(
    "type_text",
    [
        "INTEGER" + "[]" * 5000,
        "LIST(" * 3000 + "INTEGER" + ")" * 3000,
        "STRUCT(a " * 3000 + "INTEGER" + ")" * 3000,
        "INTEGER" + "[]" * (MAX_TYPE_DEPTH + 1),
    ],
)
async def test_deeply_nested_column_type_is_400(server: LiveServer, type_text: str) -> None:
    body = {"name": "deep", "columns": [{"name": "c", "type": type_text}]}
    r = await server.client.post("/v1/tables", json=body)
    err = assert_error(r, 400, "VALIDATION_FAILED")
    assert err["context"]["field"] == "columns[0].type"
    assert (await server.client.get("/v1/tables")).json()["tables"] == []


async def test_column_type_at_the_nesting_bound_is_accepted(server: LiveServer) -> None:
    deepest = "INTEGER" + "[]" * (MAX_TYPE_DEPTH - 1)
    await server.create_table({"name": "deep", "columns": [{"name": "c", "type": deepest}]})


# -- reserved table names ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["duckdb_tables", "pg_class", "PG_Settings", "sqlite_master", "information_schema"]
)
async def test_reserved_table_names_are_refused(server: LiveServer, name: str) -> None:
    r = await server.client.post("/v1/tables", json=dict(EVENTS, name=name))
    body = assert_error(r, 400, "VALIDATION_FAILED")
    assert body["context"]["reserved_prefixes"] == list(RESERVED_TABLE_PREFIXES)
    assert body["context"]["field"] == "name"
    assert (await server.client.get("/v1/tables")).json()["tables"] == []


async def test_names_merely_near_a_reserved_prefix_are_usable(server: LiveServer) -> None:
    for name in ("pg", "pgdata", "duckdb", "sqlite"):
        await server.create_table(dict(EVENTS, name=name))
        r = await server.ingest(name, [{"idempotency_key": "a", "payload": {"id": 1}}])
        assert r.status_code == 200, r.text
        token = r.json()["max_visibility_token"]
        q = await server.query(f"select count(*) from {name}", min_visibility_token=token)
        assert q.status_code == 200, q.text


# -- one key, two payloads in one request -----------------------------------------


async def test_conflicting_key_within_one_request_names_no_token(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    records = [
        {"idempotency_key": "x", "payload": {"order_id": 9}},
        {"idempotency_key": "a", "payload": {"order_id": 1, "status": "new"}},
        {"idempotency_key": "a", "payload": {"order_id": 1, "status": "paid"}},
    ]
    body = assert_error(await server.ingest("orders", records), 409, "IDEMPOTENCY_CONFLICT")
    assert body["context"] == {"record_index": 2, "first_record_index": 1, "idempotency_key": "a"}
    assert "original_token" not in json.dumps(body)
    # Nothing of the request was written: both keys are still free.
    assert (await server.client.get("/v1/lag")).json()["latest_token"] == 0
    r = await server.ingest("orders", records[1:2] + records[:1])
    assert r.json() == {
        "accepted_count": 2,
        "duplicate_count": 0,
        "max_visibility_token": 2,
        "visible_snapshot_id": None,
        "status": "accepted",
    }


async def test_conflict_with_a_committed_key_still_names_its_token(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    first = await server.ingest("orders", [{"idempotency_key": "a", "payload": {"order_id": 1}}])
    assert first.status_code == 200
    again = [{"idempotency_key": "a", "payload": {"order_id": 2}}]
    body = assert_error(await server.ingest("orders", again), 409, "IDEMPOTENCY_CONFLICT")
    assert body["context"]["original_token"] == 1


# -- integers past BIGINT --------------------------------------------------------


async def test_integer_parameters_past_bigint_are_400(server: LiveServer) -> None:
    c = server.client
    for params in (
        {"before": str(2**63)},
        {"before": str(10**30)},
        {"before": "-1"},
        {"limit": str(2**64)},
        {"limit": "0"},
        {"limit": "x"},
    ):
        body = assert_error(await c.get("/v1/snapshots", params=params), 400, "VALIDATION_FAILED")
        assert body["context"]["field"] in params
    ok = await c.get("/v1/snapshots", params={"before": str(BIGINT_MAX), "limit": "1000"})
    assert ok.status_code == 200, ok.text
    assert_error(await c.get(f"/v1/snapshots/{2**63}"), 400, "VALIDATION_FAILED")
    assert_error(await c.get(f"/v1/snapshots/{BIGINT_MAX}"), 404, "SNAPSHOT_NOT_FOUND")
    for field in ("snapshot_id", "min_visibility_token", "row_limit", "consistency_timeout_ms"):
        r = await server.query("select 1", **{field: 2**63})
        assert assert_error(r, 400, "VALIDATION_FAILED")["context"]["field"] == field
    r = await c.post("/v1/snapshots/pin", json={"snapshot_id": 2**64})
    assert_error(r, 400, "VALIDATION_FAILED")


# -- readiness ---------------------------------------------------------------------


async def test_ready_shows_the_error_class_not_its_text(
    server: LiveServer, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "payload value 4111-1111-1111-1111"

    async def leaky() -> None:
        raise ValueError(f"could not commit {secret}")

    # A real supervisor whose actor crashed; it waits long before restarting.
    policy = RestartPolicy(backoff_initial=60, backoff_max=60)
    probe = Supervisor("probe", [FunctionActor("leaky", leaky)], policy)
    nursery.start_soon(probe.run)
    root = server.rt.root
    assert root is not None
    root_tree = root.tree
    monkeypatch.setattr(
        root, "tree", lambda: root_tree() + [(f"root/{p}", s) for p, s in probe.tree()]
    )

    async def crashed() -> bool:
        return probe.tree()[1][1].last_error is not None

    await eventually(crashed)
    r = await server.client.get("/v1/ready")
    assert secret not in r.text
    leaky_row = next(a for a in r.json()["actors"] if a["path"] == "root/probe/leaky")
    assert leaky_row["last_error"] == "ValueError"
    assert leaky_row["name"] == "leaky"
    assert leaky_row["restarts"] >= 0
    probe.request_stop()
