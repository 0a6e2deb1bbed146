"""Table endpoints over real HTTP: create, list, get, evolve, drop.

Success paths, every validation error the catalog commands produce, auth
(401 / 403) and tenant isolation (another tenant's table is a 404 and never
its data).
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import psycopg
import pytest
import trio

from duckmesh.catalog import commands
from duckmesh.errors import ErrorCode
from duckmesh.events import EVENTS_CHANNEL
from duckmesh.runtime import Runtime
from tests.api.helpers import assert_error, bearer, create_tenant, eventually, issue_key
from tests.fixtures import EVENTS, ORDERS, LiveServer

COL = {"name": "a", "type": "INTEGER"}


def table(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(ORDERS)
    body.update(changes)
    return body


# -- create ----------------------------------------------------------------------


async def test_create_table_returns_the_definition(server: LiveServer) -> None:
    r = await server.client.post(
        "/v1/tables",
        json=table(
            columns=[
                {"name": "order_id", "type": "bigint"},  # key columns become NOT NULL
                {"name": "status", "type": "text"},
                {"name": "amount", "type": "decimal( 10 , 2 )"},
                {"name": "at", "type": "TIMESTAMPTZ", "nullable": False},
                {"name": "tags", "type": "LIST(VARCHAR)"},
                {"name": "meta", "type": "STRUCT(a INT, b VARCHAR[])"},
                {"name": "doc", "type": "JSON"},
            ],
            partition_by={"event_time": "hour"},
            retention={"max_age_days": 7},
        ),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "orders"
    assert body["table_id"].startswith("orders-")
    meta = body["columns"][5]
    meta["type"] = meta["type"].replace('"', "")  # field names may be quoted
    assert body["columns"] == [
        {"name": "order_id", "type": "BIGINT", "nullable": False},
        {"name": "status", "type": "VARCHAR", "nullable": True},
        {"name": "amount", "type": "DECIMAL(10,2)", "nullable": True},
        {"name": "at", "type": "TIMESTAMPTZ", "nullable": False},
        {"name": "tags", "type": "VARCHAR[]", "nullable": True},
        {"name": "meta", "type": "STRUCT(a INTEGER, b VARCHAR[])", "nullable": True},
        {"name": "doc", "type": "JSON", "nullable": True},
    ]
    assert body["primary_key"] == ["order_id"]
    assert body["partition_by"] == {"event_time": "hour"}
    assert body["retention"] == {"max_age_days": 7}
    assert body["compatibility"] == "backward"
    assert body["schema_version"] == 1
    assert body["created_at"]
    r = await server.client.get("/v1/tables/orders")
    assert r.json() == r.json() | {"name": "orders", "schema_version": 1}
    assert r.json()["columns"][:5] == body["columns"][:5]


async def test_create_append_only_table_with_nulls(server: LiveServer) -> None:
    body = await server.create_table(
        {
            "name": "ev",
            "columns": [COL],
            "primary_key": None,
            "partition_by": None,
            "retention": None,
        }
    )
    assert body["primary_key"] == []
    assert body["partition_by"] is None
    assert body["retention"] is None
    body = await server.create_table(
        {"name": "ev2", "columns": [COL], "primary_key": [], "compatibility": "backward"}
    )
    assert body["primary_key"] == []


async def test_create_existing_table_is_409(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    r = await server.client.post("/v1/tables", json=EVENTS | {"name": "orders"})
    body = assert_error(r, 409, "TABLE_EXISTS")
    assert body["context"] == {"table": "orders"}


async def test_names_are_unique_ignoring_case(server: LiveServer) -> None:
    """DuckDB resolves names case-insensitively, so the catalog does too."""
    await server.create_table(ORDERS)
    r = await server.client.post("/v1/tables", json=EVENTS | {"name": "ORDERS"})
    body = assert_error(r, 409, "TABLE_EXISTS")
    assert body["context"] == {"table": "orders"}
    r = await server.client.post(
        "/v1/tables",
        json={
            "name": "t",
            "columns": [{"name": "id", "type": "INTEGER"}, {"name": "ID", "type": "BIGINT"}],
        },
    )
    body = assert_error(r, 400, "VALIDATION_FAILED")
    assert body["context"] == {"field": "columns"}
    r = await server.client.patch(
        "/v1/tables/orders", json={"add_columns": [{"name": "STATUS", "type": "VARCHAR"}]}
    )
    body = assert_error(r, 400, "SCHEMA_INCOMPATIBLE")
    assert body["context"]["change"] == "add"


async def test_concurrent_creates_of_different_tables_all_succeed(server: LiveServer) -> None:
    """Creates race on the tenant's table stream; the API retries the
    optimistic-concurrency conflict instead of failing a valid request."""
    statuses: dict[str, int] = {}

    async def create(name: str) -> None:
        r = await server.client.post("/v1/tables", json={"name": name, "columns": [COL]})
        statuses[name] = r.status_code

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(create, f"t{i}")
    assert statuses == {f"t{i}": 201 for i in range(8)}
    r = await server.client.get("/v1/tables")
    assert [t["name"] for t in r.json()["tables"]] == [f"t{i}" for i in range(8)]


async def test_table_commands_retry_a_concurrency_conflict(
    server: LiveServer, runtime: Runtime
) -> None:
    """Hold the tenant's table stream while three creates queue behind it,
    then move it on: every queued append fails its version check, and the
    API retries instead of answering 409."""
    await server.create_table(EVENTS)  # the stream row exists
    statuses: dict[str, int] = {}

    async def create(name: str) -> None:
        r = await server.client.post("/v1/tables", json={"name": name, "columns": [COL]})
        statuses[name] = r.status_code

    def waiting() -> int:
        with psycopg.connect(runtime.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%UPDATE event_stream%%'"
            ).fetchone()
            return int(row[0]) if row else 0

    async def three_waiting() -> bool:
        return await trio.to_thread.run_sync(waiting) == 3

    with psycopg.connect(runtime.dsn) as blocker:
        blocker.execute(
            "SELECT version FROM event_stream WHERE stream = 'tables:default' FOR UPDATE"
        )
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(create, f"t{i}")
            await eventually(three_waiting, timeout=10)
            commands.create_table(
                blocker, "default", {"name": "other", "columns": [COL]}, actor="test"
            )
            blocker.commit()
    assert statuses == {"t0": 201, "t1": 201, "t2": 201}
    r = await server.client.get("/v1/tables")
    assert [t["name"] for t in r.json()["tables"]] == ["events", "other", "t0", "t1", "t2"]


BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("name-digit-first", table(name="1orders"), "name"),
    ("name-dash", table(name="bad-name"), "name"),
    ("name-space", table(name="bad name"), "name"),
    ("name-reserved", table(name="_dm_orders"), "name"),
    ("name-reserved-case", table(name="_DM_orders"), "name"),
    ("name-too-long", table(name="a" * 64), "name"),
    ("name-empty", table(name=""), "name"),
    ("name-not-string", table(name=7), "name"),
    ("name-missing", {"columns": [COL]}, "name"),
    ("columns-empty", table(columns=[]), "columns"),
    ("columns-missing", {"name": "t"}, "columns"),
    ("columns-not-array", table(columns={"a": "INTEGER"}), "columns"),
    ("column-not-object", table(columns=["a INTEGER"]), "columns[0]"),
    (
        "column-duplicate",
        table(columns=[COL, {"name": "a", "type": "BIGINT"}], primary_key=[]),
        "columns",
    ),
    (
        "column-bad-name",
        table(columns=[{"name": "a b", "type": "INTEGER"}], primary_key=[]),
        "columns[0].name",
    ),
    (
        "column-reserved-name",
        table(columns=[{"name": "_dm_token", "type": "BIGINT"}], primary_key=[]),
        "columns[0].name",
    ),
    ("column-missing-type", table(columns=[{"name": "a"}], primary_key=[]), "columns[0].type"),
    (
        "column-type-not-string",
        table(columns=[{"name": "a", "type": 5}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-bad-type",
        table(columns=[{"name": "a", "type": "VARCHAR2"}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-bad-decimal",
        table(columns=[{"name": "a", "type": "DECIMAL(40,2)"}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-decimal-scale",
        table(columns=[{"name": "a", "type": "DECIMAL(4,5)"}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-empty-struct",
        table(columns=[{"name": "a", "type": "STRUCT()"}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-struct-dupe",
        table(columns=[{"name": "a", "type": "STRUCT(x INT, x INT)"}], primary_key=[]),
        "columns[0].type",
    ),
    (
        "column-bad-nullable",
        table(columns=[{"name": "a", "type": "INTEGER", "nullable": "no"}], primary_key=[]),
        "columns[0].nullable",
    ),
    (
        "column-unknown-key",
        table(columns=[{"name": "a", "type": "INTEGER", "default": 1}], primary_key=[]),
        "columns[0]",
    ),
    ("pk-unknown-column", table(primary_key=["nope"]), "primary_key"),
    ("pk-repeated", table(primary_key=["order_id", "order_id"]), "primary_key"),
    ("pk-not-array", table(primary_key="order_id"), "primary_key"),
    ("pk-not-strings", table(primary_key=[1]), "primary_key"),
    (
        "pk-list-column",
        table(columns=[{"name": "a", "type": "INTEGER[]"}], primary_key=["a"]),
        "primary_key",
    ),
    (
        "pk-json-column",
        table(columns=[{"name": "a", "type": "JSON"}], primary_key=["a"]),
        "primary_key",
    ),
    ("unknown-key", table(owner="me"), "owner"),
    ("retention-zero", table(retention={"max_age_days": 0}), "retention"),
    ("retention-string", table(retention={"max_age_days": "7"}), "retention"),
    ("retention-bool", table(retention={"max_age_days": True}), "retention"),
    ("retention-other-key", table(retention={"days": 7}), "retention"),
    ("retention-extra-key", table(retention={"max_age_days": 7, "x": 1}), "retention"),
    ("retention-number", table(retention=7), "retention"),
    ("partition-granularity", table(partition_by={"event_time": "minute"}), "partition_by"),
    ("partition-column", table(partition_by={"created_at": "day"}), "partition_by"),
    ("partition-string", table(partition_by="day"), "partition_by"),
    ("compatibility", table(compatibility="forward"), "compatibility"),
    ("compatibility-null", table(compatibility=None), "compatibility"),
]


async def test_create_table_validation(server: LiveServer) -> None:
    failures = []
    for case, body, field in BAD_CREATES:
        r = await server.client.post("/v1/tables", json=body)
        try:
            err = assert_error(r, 400, "VALIDATION_FAILED")
            assert err["context"]["field"] == field, err
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)
    r = await server.client.get("/v1/tables")
    assert r.json() == {"tables": []}


# -- list / get ------------------------------------------------------------------


async def test_list_and_get(server: LiveServer) -> None:
    assert (await server.client.get("/v1/tables")).json() == {"tables": []}
    orders = await server.create_table(ORDERS)
    events = await server.create_table(EVENTS)
    r = await server.client.get("/v1/tables")
    assert r.status_code == 200
    assert r.json() == {"tables": [events, orders]}  # ordered by name
    r = await server.client.get("/v1/tables/events")
    assert r.json() == events
    r = await server.client.get("/v1/tables/nope")
    body = assert_error(r, 404, "TABLE_NOT_FOUND")
    assert body["context"] == {"table": "nope"}


async def test_reader_can_list_and_get_but_not_change(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    _, key = await issue_key(server.rt, "default", ["query_reader"])
    h = bearer(key)
    c = server.client
    assert (await c.get("/v1/tables", headers=h)).status_code == 200
    assert (await c.get("/v1/tables/orders", headers=h)).status_code == 200
    r = await c.patch(
        "/v1/tables/orders", headers=h, json={"add_columns": [{"name": "x", "type": "INTEGER"}]}
    )
    body = assert_error(r, 403, "FORBIDDEN")
    assert body["context"] == {"required_roles": ["table_admin"]}
    assert_error(await c.delete("/v1/tables/orders", headers=h), 403, "FORBIDDEN")
    assert_error(await c.post("/v1/tables", headers=h, json=EVENTS), 403, "FORBIDDEN")
    assert (await c.get("/v1/tables/orders")).json()["schema_version"] == 1


async def test_writer_cannot_create_or_read_tables(server: LiveServer) -> None:
    _, key = await issue_key(server.rt, "default", ["ingest_writer"])
    h = bearer(key)
    r = await server.client.post("/v1/tables", headers=h, json=ORDERS)
    body = assert_error(r, 403, "FORBIDDEN")
    assert body["context"] == {"required_roles": ["table_admin"]}
    r = await server.client.get("/v1/tables", headers=h)
    body = assert_error(r, 403, "FORBIDDEN")
    assert sorted(body["context"]["required_roles"]) == ["query_reader", "table_admin"]
    assert_error(await server.client.get("/v1/tables/orders", headers=h), 403, "FORBIDDEN")
    assert (await server.client.get("/v1/tables")).json() == {"tables": []}


async def test_table_admin_alone_can_manage(server: LiveServer) -> None:
    _, key = await issue_key(server.rt, "default", ["table_admin"])
    h = bearer(key)
    c = server.client
    assert (await c.post("/v1/tables", headers=h, json=ORDERS)).status_code == 201
    assert (await c.get("/v1/tables", headers=h)).status_code == 200
    assert (await c.get("/v1/tables/orders", headers=h)).status_code == 200
    r = await c.patch(
        "/v1/tables/orders", headers=h, json={"add_columns": [{"name": "x", "type": "INTEGER"}]}
    )
    assert r.status_code == 200, r.text
    assert (await c.delete("/v1/tables/orders", headers=h)).status_code == 200


TABLE_ENDPOINTS = [
    ("POST", "/v1/tables"),
    ("GET", "/v1/tables"),
    ("GET", "/v1/tables/orders"),
    ("PATCH", "/v1/tables/orders"),
    ("DELETE", "/v1/tables/orders"),
]


async def test_table_endpoints_need_a_valid_key(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    async with httpx.AsyncClient(base_url=server.base_url) as anon:
        for method, path in TABLE_ENDPOINTS:
            body: dict[str, Any] = {"json": EVENTS} if method in ("POST", "PATCH") else {}
            assert_error(await anon.request(method, path, **body), 401, "UNAUTHENTICATED")
            r = await anon.request(method, path, headers=bearer("dmk_" + "x" * 43), **body)
            assert_error(r, 401, "UNAUTHENTICATED")
            r = await anon.request(method, path, headers={"X-API-Key": "wrong"}, **body)
            assert_error(r, 401, "UNAUTHENTICATED")
    assert (await server.client.get("/v1/tables/orders")).json()["schema_version"] == 1
    assert [t["name"] for t in (await server.client.get("/v1/tables")).json()["tables"]] == [
        "orders"
    ]


# -- evolve ----------------------------------------------------------------------


async def test_evolve_adds_nullable_columns_and_widens(server: LiveServer) -> None:
    await server.create_table(
        {
            "name": "m",
            "columns": [
                {"name": "id", "type": "BIGINT"},
                {"name": "n", "type": "INTEGER"},
                {"name": "s", "type": "SMALLINT", "nullable": False},
                {"name": "f", "type": "FLOAT"},
                {"name": "d", "type": "DECIMAL(10,2)"},
            ],
            "primary_key": ["id"],
        }
    )
    r = await server.client.patch(
        "/v1/tables/m",
        json={
            "add_columns": [
                {"name": "note", "type": "VARCHAR"},
                {"name": "flag", "type": "BOOLEAN", "nullable": True},
            ],
            "widen_columns": [
                {"name": "n", "type": "BIGINT"},
                {"name": "s", "type": "INTEGER"},
                {"name": "f", "type": "DOUBLE"},
                {"name": "d", "type": "DECIMAL(12,3)"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema_version"] == 2
    meta = body["columns"][5]
    meta["type"] = meta["type"].replace('"', "")  # field names may be quoted
    assert body["columns"] == [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "n", "type": "BIGINT", "nullable": True},
        {"name": "s", "type": "INTEGER", "nullable": False},  # nullability kept
        {"name": "f", "type": "DOUBLE", "nullable": True},
        {"name": "d", "type": "DECIMAL(12,3)", "nullable": True},
        {"name": "note", "type": "VARCHAR", "nullable": True},
        {"name": "flag", "type": "BOOLEAN", "nullable": True},
    ]
    assert (await server.client.get("/v1/tables/m")).json() == body
    r = await server.client.patch(
        "/v1/tables/m",
        json={"widen_columns": [{"name": "s", "type": "BIGINT"}], "add_columns": None},
    )
    assert r.status_code == 200, r.text
    assert r.json()["schema_version"] == 3


async def test_evolve_then_ingest_uses_the_new_schema(server: LiveServer) -> None:
    """The API's per-table validator must not outlive a schema change it made."""
    await server.create_table(EVENTS)
    r = await server.ingest("events", [{"idempotency_key": "1", "payload": {"id": 1}}])
    assert r.status_code == 200, r.text  # the validator for v1 is now cached
    r = await server.client.patch(
        "/v1/tables/events", json={"add_columns": [{"name": "extra", "type": "VARCHAR"}]}
    )
    assert r.status_code == 200, r.text
    r = await server.ingest(
        "events", [{"idempotency_key": "2", "payload": {"id": 2, "extra": "x"}}]
    )
    assert r.status_code == 200, r.text
    q = await server.query(
        "select id, extra from events order by id",
        min_visibility_token=r.json()["max_visibility_token"],
    )
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[1, None], [2, "x"]]


@pytest.fixture
def lost_table_notifications(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every ``tables:`` catalog notification this process would receive
    (LISTEN/NOTIFY is best effort; correctness must not depend on it)."""
    original = runtime.notifications.dispatch

    def dispatch(channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL and payload.startswith("tables:"):
            return
        original(channel, payload)

    monkeypatch.setattr(runtime.notifications, "dispatch", dispatch)


@pytest.mark.usefixtures("lost_table_notifications")
async def test_own_schema_change_applies_without_a_notification(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    r = await server.ingest("events", [{"idempotency_key": "1", "payload": {"id": 1}}])
    assert r.status_code == 200, r.text
    r = await server.client.patch(
        "/v1/tables/events", json={"add_columns": [{"name": "extra", "type": "VARCHAR"}]}
    )
    assert r.status_code == 200, r.text
    r = await server.ingest(
        "events", [{"idempotency_key": "2", "payload": {"id": 2, "extra": "x"}}]
    )
    assert r.status_code == 200, r.text
    r = await server.client.delete("/v1/tables/events")
    assert r.status_code == 200, r.text
    r = await server.ingest("events", [{"idempotency_key": "3", "payload": {"id": 3}}])
    assert_error(r, 404, "TABLE_NOT_FOUND")


BAD_EVOLVES: list[tuple[str, Any, ErrorCode, str]] = [
    (
        "add-not-nullable",
        {"add_columns": [{"name": "x", "type": "INTEGER", "nullable": False}]},
        "SCHEMA_INCOMPATIBLE",
        "x",
    ),
    (
        "add-existing",
        {"add_columns": [{"name": "status", "type": "VARCHAR"}]},
        "SCHEMA_INCOMPATIBLE",
        "status",
    ),
    (
        "add-twice",
        {"add_columns": [{"name": "x", "type": "INTEGER"}, {"name": "x", "type": "INTEGER"}]},
        "SCHEMA_INCOMPATIBLE",
        "x",
    ),
    (
        "widen-varchar-to-bigint",
        {"widen_columns": [{"name": "status", "type": "BIGINT"}]},
        "SCHEMA_INCOMPATIBLE",
        "status",
    ),
    (
        "narrow-bigint-to-integer",
        {"widen_columns": [{"name": "qty", "type": "INTEGER"}]},
        "SCHEMA_INCOMPATIBLE",
        "qty",
    ),
    (
        "double-to-float",
        {"widen_columns": [{"name": "amount", "type": "FLOAT"}]},
        "SCHEMA_INCOMPATIBLE",
        "amount",
    ),
    (
        "widen-missing-column",
        {"widen_columns": [{"name": "nope", "type": "BIGINT"}]},
        "SCHEMA_INCOMPATIBLE",
        "nope",
    ),
    (
        "widen-key-column",
        {"widen_columns": [{"name": "order_id", "type": "BIGINT"}]},
        "SCHEMA_INCOMPATIBLE",
        "order_id",
    ),
    ("empty-body", {}, "VALIDATION_FAILED", ""),
    ("unknown-key", {"add_columns": [], "rename_columns": []}, "VALIDATION_FAILED", ""),
    ("add-not-array", {"add_columns": {"name": "x", "type": "INTEGER"}}, "VALIDATION_FAILED", ""),
    ("widen-not-array", {"widen_columns": "qty BIGINT"}, "VALIDATION_FAILED", ""),
    (
        "add-bad-type",
        {"add_columns": [{"name": "x", "type": "NUMBER"}]},
        "VALIDATION_FAILED",
        "add_columns[0].type",
    ),
    (
        "add-bad-name",
        {"add_columns": [{"name": "x-y", "type": "INTEGER"}]},
        "VALIDATION_FAILED",
        "add_columns[0].name",
    ),
    ("widen-bad-column", {"widen_columns": ["qty"]}, "VALIDATION_FAILED", "widen_columns[0]"),
]


async def test_evolve_validation(server: LiveServer) -> None:
    created = await server.create_table(
        table(columns=[*ORDERS["columns"], {"name": "qty", "type": "BIGINT"}])
    )
    failures = []
    for case, body, code, detail in BAD_EVOLVES:
        r = await server.client.patch("/v1/tables/orders", json=body)
        try:
            err = assert_error(r, 400, code)
            if code == "SCHEMA_INCOMPATIBLE":
                assert err["context"]["column"] == detail, err
            elif detail:
                assert err["context"]["field"] == detail, err
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)
    assert (await server.client.get("/v1/tables/orders")).json() == created


async def test_incompatible_widen_reports_both_types(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    r = await server.client.patch(
        "/v1/tables/orders", json={"widen_columns": [{"name": "status", "type": "BIGINT"}]}
    )
    err = assert_error(r, 400, "SCHEMA_INCOMPATIBLE")
    assert err["context"] == {
        "column": "status",
        "change": "widen",
        "old_type": "VARCHAR",
        "new_type": "BIGINT",
    }


@pytest.mark.parametrize(
    "body", [{"add_columns": []}, {"widen_columns": None}, {"add_columns": [], "widen_columns": []}]
)
async def test_evolve_without_changes_is_rejected(server: LiveServer, body: Any) -> None:
    await server.create_table(ORDERS)
    r = await server.client.patch("/v1/tables/orders", json=body)
    assert_error(r, 400, "VALIDATION_FAILED")
    assert (await server.client.get("/v1/tables/orders")).json()["schema_version"] == 1


async def test_evolve_unknown_table_is_404(server: LiveServer) -> None:
    r = await server.client.patch(
        "/v1/tables/nope", json={"add_columns": [{"name": "x", "type": "INTEGER"}]}
    )
    assert_error(r, 404, "TABLE_NOT_FOUND")


# -- drop ------------------------------------------------------------------------


async def test_drop_then_404_and_name_reusable(server: LiveServer) -> None:
    first = await server.create_table(ORDERS)
    r = await server.ingest("orders", [{"idempotency_key": "1", "payload": {"order_id": 1}}])
    assert r.status_code == 200, r.text  # caches the ingest validator
    r = await server.client.delete("/v1/tables/orders")
    assert r.status_code == 200, r.text
    assert r.json() == {"dropped": "orders"}
    assert_error(await server.client.get("/v1/tables/orders"), 404, "TABLE_NOT_FOUND")
    assert (await server.client.get("/v1/tables")).json() == {"tables": []}
    assert_error(await server.client.delete("/v1/tables/orders"), 404, "TABLE_NOT_FOUND")
    r = await server.client.patch(
        "/v1/tables/orders", json={"add_columns": [{"name": "x", "type": "INTEGER"}]}
    )
    assert_error(r, 404, "TABLE_NOT_FOUND")
    r = await server.ingest("orders", [{"idempotency_key": "2", "payload": {"order_id": 2}}])
    assert_error(r, 404, "TABLE_NOT_FOUND")
    second = await server.create_table(EVENTS | {"name": "orders"})
    assert second["table_id"] != first["table_id"]
    assert second["schema_version"] == 1


# -- tenant isolation ------------------------------------------------------------


async def _other_tenant_with_data(rt: Runtime, server: LiveServer) -> dict[str, str]:
    await create_tenant(rt, "t2")
    _, key = await issue_key(
        rt, "t2", ["ingest_writer", "query_reader", "table_admin", "ops_admin"]
    )
    h = bearer(key)
    c = server.client
    r = await c.post(
        "/v1/tables",
        headers=h,
        json={
            "name": "secret",
            "columns": [{"name": "id", "type": "BIGINT"}, {"name": "word", "type": "VARCHAR"}],
        },
    )
    assert r.status_code == 201, r.text
    r = await c.post("/v1/tables", headers=h, json=ORDERS)  # a name default also uses
    assert r.status_code == 201, r.text
    r = await c.post(
        "/v1/ingest/secret",
        headers=h,
        json={
            "records": [{"idempotency_key": "s1", "payload": {"id": 7, "word": "xyzzy-t2-only"}}],
            "wait_for_visibility": True,
            "visibility_timeout_ms": 10_000,
        },
    )
    assert r.status_code == 200, r.text
    r = await c.post(
        "/v1/ingest/orders",
        headers=h,
        json={
            "records": [
                {
                    "idempotency_key": "o1",
                    "op": "upsert",
                    "payload": {"order_id": 1, "status": "plugh-t2-only"},
                }
            ],
            "wait_for_visibility": True,
            "visibility_timeout_ms": 10_000,
        },
    )
    assert r.status_code == 200, r.text
    q = await c.post("/v1/query", headers=h, json={"sql": "select word from secret"})
    assert q.json()["rows"] == [["xyzzy-t2-only"]], q.text
    return h


async def test_other_tenants_tables_are_invisible(server: LiveServer, runtime: Runtime) -> None:
    t2 = await _other_tenant_with_data(runtime, server)
    c = server.client  # tenant default, all roles

    def leaks(r: httpx.Response) -> bool:
        return "xyzzy" in r.text or "plugh" in r.text

    r = await c.get("/v1/tables")
    assert r.json() == {"tables": []}
    responses = [
        assert_error(await c.get("/v1/tables/secret"), 404, "TABLE_NOT_FOUND"),
        assert_error(
            await c.patch(
                "/v1/tables/secret", json={"add_columns": [{"name": "x", "type": "INTEGER"}]}
            ),
            404,
            "TABLE_NOT_FOUND",
        ),
        assert_error(await c.delete("/v1/tables/secret"), 404, "TABLE_NOT_FOUND"),
        assert_error(
            await server.ingest("secret", [{"idempotency_key": "s1", "payload": {"id": 8}}]),
            404,
            "TABLE_NOT_FOUND",
        ),
    ]
    assert all("t2" not in str(body) for body in responses), responses
    r = await server.query("select * from secret")
    assert r.status_code == 400, r.text
    assert not leaks(r)

    # The same name in both tenants: each sees only its own.
    await server.create_table(ORDERS)
    r = await server.ingest(
        "orders",
        [{"idempotency_key": "o1", "op": "upsert", "payload": {"order_id": 1, "status": "mine"}}],
        wait_for_visibility=True,
        visibility_timeout_ms=10_000,
    )
    assert r.status_code == 200, r.text
    assert r.json()["duplicate_count"] == 0  # idempotency keys are per tenant
    r = await server.query("select order_id, status from orders")
    assert r.json()["rows"] == [[1, "mine"]], r.text
    for sql in (
        "select * from secret",
        "select * from t2.secret",
        "select * from t2.orders",
        "select * from information_schema.tables",
        "select * from duckdb_tables()",
    ):
        r = await server.query(sql)
        assert not leaks(r), (sql, r.text)
        if r.status_code == 200:  # catalog views, if allowed, list only default's tables
            assert "secret" not in r.text, (sql, r.text)

    # And t2 still has everything, untouched by default's attempts.
    r = await c.get("/v1/tables/secret", headers=t2)
    assert r.status_code == 200, r.text
    assert r.json()["schema_version"] == 1
    q = await c.post("/v1/query", headers=t2, json={"sql": "select status from orders"})
    assert q.json()["rows"] == [["plugh-t2-only"]], q.text
