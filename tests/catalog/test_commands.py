"""The catalog command layer and the schema registry, on a real catalog.

HTTP-level validation lives in tests/api; here the commands are called
directly: tenants, keys, table definitions, evolutions, drops, pins, and the
registry of schema versions (every version kept and retrievable, and
``tables_as_of`` answering with the schema of that time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from duckmesh import events
from duckmesh.catalog import commands, reads
from duckmesh.catalog.model import ROLES, Column, TableDef
from duckmesh.catalog.table_requests import CreateTableRequest
from duckmesh.errors import DuckMeshError
from duckmesh.events.types import TableSchemaEvolved
from tests.strategies import (
    FileSpec,
    PublishSnapshot,
    publish_snapshot,
    schema_evolutions,
    table_definitions,
)

Conn = psycopg.Connection[Any]
R = TypeVar("R")
US = dt.timedelta(microseconds=1)


def tx(conn: Conn, fn: Callable[[Conn], R]) -> R:
    with conn.transaction():
        return fn(conn)


def fails(conn: Conn, code: str, fn: Callable[[Conn], object]) -> DuckMeshError:
    """``fn`` raises ``code`` and appends nothing."""
    before = events.count(conn)
    with pytest.raises(DuckMeshError) as info:
        tx(conn, fn)
    assert info.value.error_code == code, info.value.message
    assert events.count(conn) == before
    return info.value


@pytest.fixture(scope="module")
def shared(pg_dsn: str, template_db: str) -> Iterator[Conn]:
    """One catalog for the tests that only check refusals (which append
    nothing): tenant ``acme`` with the ``orders`` table. Saves a database per
    parametrized case."""
    name = f"dm_cat_{secrets.token_hex(5)}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        with psycopg.connect(make_conninfo(pg_dsn, dbname=name), autocommit=True) as conn:
            tx(conn, lambda c: commands.create_tenant(c, "acme"))
            create(conn, "acme", ORDERS)
            yield conn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def tenant(conn: Conn) -> str:
    tx(conn, lambda c: commands.create_tenant(c, "acme", "Acme Inc"))
    return "acme"


ORDERS: dict[str, Any] = {
    "name": "orders",
    "columns": [
        {"name": "order_id", "type": "BIGINT", "nullable": False},
        {"name": "status", "type": "VARCHAR"},
        {"name": "amount", "type": "DECIMAL(10,2)"},
        {"name": "qty", "type": "INT"},
    ],
    "primary_key": ["order_id"],
}


def create(conn: Conn, tenant: str, body: dict[str, Any] | CreateTableRequest) -> TableDef:
    return tx(conn, lambda c: commands.create_table(c, tenant, body, actor="test"))


def evolve(conn: Conn, tenant: str, name: str, body: dict[str, Any]) -> TableDef:
    return tx(conn, lambda c: commands.evolve_table(c, tenant, name, body, actor="test"))


# --- tenants ---------------------------------------------------------------------


def test_create_tenant(conn: Conn) -> None:
    tx(conn, lambda c: commands.create_tenant(c, "acme", "Acme Inc", actor="cli"))
    row = conn.execute("SELECT tenant_id, name, status FROM tenant").fetchone()
    assert row == ("acme", "Acme Inc", "active")
    (rec,) = events.read_stream(conn, commands.tenant_stream("acme"))
    assert rec.metadata == {"actor": "cli"}
    assert reads.tenant_ids(conn) == ["acme"]


def test_tenant_name_defaults_to_its_id(conn: Conn) -> None:
    tx(conn, lambda c: commands.create_tenant(c, "beta"))
    assert conn.execute("SELECT name FROM tenant").fetchone() == ("beta",)


def test_create_tenant_twice(conn: Conn, tenant: str) -> None:
    err = fails(conn, "TENANT_EXISTS", lambda c: commands.create_tenant(c, tenant, "Other"))
    assert err.context == {"tenant": tenant}
    assert conn.execute("SELECT name FROM tenant").fetchall() == [("Acme Inc",)]


@pytest.mark.parametrize(
    "tenant_id",
    [
        "",
        "Acme",
        "ACME",
        "-acme",
        "_acme",
        "a" * 64,
        "a b",
        "acme\n",
        "\nacme",
        "äcme",
        "a.b",
        "a/b",
    ],
)
def test_bad_tenant_ids(shared: Conn, tenant_id: str) -> None:
    fails(shared, "VALIDATION_FAILED", lambda c: commands.create_tenant(c, tenant_id))


def test_tenant_id_must_be_a_string(shared: Conn) -> None:
    fails(shared, "VALIDATION_FAILED", lambda c: commands.create_tenant(c, 7))  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant_id", ["a", "0", "a-b_c", "9lives", "a" * 63])
def test_good_tenant_ids(conn: Conn, tenant_id: str) -> None:
    tx(conn, lambda c: commands.create_tenant(c, tenant_id))
    assert reads.tenant_ids(conn) == [tenant_id]


@pytest.mark.parametrize("name", ["", "nul\x00byte", "line\nbreak", "x" * 201, "\x9b", "\ud800"])
def test_bad_tenant_names(shared: Conn, name: str) -> None:
    err = fails(shared, "VALIDATION_FAILED", lambda c: commands.create_tenant(c, "beta", name))
    assert err.context == {"field": "name"}


def test_unicode_tenant_names_are_kept(conn: Conn) -> None:
    tx(conn, lambda c: commands.create_tenant(c, "acme", "Ümlaut & Söhne — 東京"))
    assert conn.execute("SELECT name FROM tenant").fetchone() == ("Ümlaut & Söhne — 東京",)


def test_disable_tenant(conn: Conn, tenant: str) -> None:
    key_id, _ = tx(conn, lambda c: commands.issue_key(c, tenant, ["query_reader"]))
    tx(conn, lambda c: commands.disable_tenant(c, tenant))
    assert conn.execute("SELECT status FROM tenant").fetchone() == ("disabled",)
    found = reads.lookup_key(conn, key_id)
    assert found is not None
    assert found[4] == "disabled"
    fails(conn, "NOT_FOUND", lambda c: commands.disable_tenant(c, "nobody"))


# --- keys --------------------------------------------------------------------------


def test_issue_key(conn: Conn, tenant: str) -> None:
    roles = ["table_admin", "ingest_writer", "ingest_writer"]
    key_id, plaintext = tx(conn, lambda c: commands.issue_key(c, tenant, roles, actor="cli"))
    assert plaintext.startswith("dmk_")
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    assert key_id == digest[:16]
    row = conn.execute("SELECT tenant_id, key_hash, roles, revoked_at FROM api_key").fetchone()
    # Roles are deduplicated and kept in the canonical order.
    assert row == (tenant, digest, ["ingest_writer", "table_admin"], None)
    assert reads.lookup_key(conn, key_id) == (
        tenant,
        digest,
        ["ingest_writer", "table_admin"],
        True,
        "active",
    )
    # The plaintext is stored nowhere: not in the log, not in a projection.
    log = conn.execute("SELECT payload::text || metadata::text FROM event_log").fetchall()
    assert all(plaintext not in r[0] for r in log)
    assert plaintext not in str(conn.execute("SELECT * FROM api_key").fetchall())


def test_issue_key_with_a_given_plaintext(conn: Conn, tenant: str) -> None:
    given_key = "dmk_test_" + "k" * 40
    key_id, plaintext = tx(conn, lambda c: commands.issue_key(c, tenant, list(ROLES), given_key))
    assert plaintext == given_key
    assert key_id == hashlib.sha256(given_key.encode()).hexdigest()[:16]


def test_every_key_is_different(conn: Conn, tenant: str) -> None:
    keys = [tx(conn, lambda c: commands.issue_key(c, tenant, ["query_reader"])) for _ in range(5)]
    assert len({k for k, _ in keys}) == len({p for _, p in keys}) == 5


@pytest.mark.parametrize(
    "roles", [[], ["admin"], ["query_reader", "root"], ["QUERY_READER"], ["ops_admin "]]
)
def test_issue_key_with_bad_roles(shared: Conn, roles: list[str]) -> None:
    err = fails(shared, "VALIDATION_FAILED", lambda c: commands.issue_key(c, "acme", roles))
    assert err.context["bad"] == sorted(set(roles) - set(ROLES))
    assert shared.execute("SELECT count(*) FROM api_key").fetchone() == (0,)


def test_issue_key_for_an_unknown_tenant(conn: Conn) -> None:
    fails(conn, "NOT_FOUND", lambda c: commands.issue_key(c, "nobody", ["query_reader"]))


def test_revoke_key(conn: Conn, tenant: str) -> None:
    key_id, _ = tx(conn, lambda c: commands.issue_key(c, tenant, ["query_reader"]))
    other, _ = tx(conn, lambda c: commands.issue_key(c, tenant, ["query_reader"]))
    tx(conn, lambda c: commands.revoke_key(c, key_id, actor="ops"))
    found = reads.lookup_key(conn, key_id)
    assert found is not None
    assert found[3] is False
    still = reads.lookup_key(conn, other)
    assert still is not None
    assert still[3] is True
    revoked_at = conn.execute("SELECT revoked_at FROM api_key WHERE key_id = %s", (key_id,))
    first = revoked_at.fetchone()
    # Revoking again is a no-op: no event, the first revocation time stays.
    count = events.count(conn)
    tx(conn, lambda c: commands.revoke_key(c, key_id))
    assert events.count(conn) == count
    again = conn.execute("SELECT revoked_at FROM api_key WHERE key_id = %s", (key_id,))
    assert again.fetchone() == first


def test_revoke_unknown_key(conn: Conn, tenant: str) -> None:
    fails(conn, "NOT_FOUND", lambda c: commands.revoke_key(c, "0123456789abcdef"))


def test_tenant_stream_orders_key_events(conn: Conn, tenant: str) -> None:
    key_id, _ = tx(conn, lambda c: commands.issue_key(c, tenant, ["query_reader"]))
    tx(conn, lambda c: commands.revoke_key(c, key_id))
    tx(conn, lambda c: commands.disable_tenant(c, tenant))
    recorded = events.read_stream(conn, commands.tenant_stream(tenant))
    assert [r.event.event_type for r in recorded] == [
        "TenantCreated",
        "ApiKeyIssued",
        "ApiKeyRevoked",
        "TenantDisabled",
    ]
    assert [r.version for r in recorded] == [1, 2, 3, 4]


# --- create_table ------------------------------------------------------------------


def test_create_table(conn: Conn, tenant: str) -> None:
    table = create(conn, tenant, ORDERS)
    assert table.name == "orders"
    assert table.table_id.startswith("orders-")
    assert table.schema_version == 1
    assert table.compatibility == "backward"
    assert table.primary_key == ("order_id",)
    assert table.columns == (
        Column("order_id", "BIGINT", False),
        Column("status", "VARCHAR", True),
        Column("amount", "DECIMAL(10,2)", True),
        Column("qty", "INTEGER", True),  # stored in canonical spelling
    )
    assert reads.get_table(conn, tenant, "orders") == table
    assert reads.list_tables(conn, tenant) == [table]
    assert reads.get_table(conn, "other", "orders") is None


def test_key_columns_are_never_null(conn: Conn, tenant: str) -> None:
    body = {
        "name": "t",
        "columns": [{"name": "a", "type": "INT"}, {"name": "b", "type": "DATE"}],
        "primary_key": ["b", "a"],
    }
    table = create(conn, tenant, body)
    assert table.primary_key == ("b", "a")
    assert [c.nullable for c in table.columns] == [False, False]


def test_a_parsed_request_creates_the_same_table_without_a_catalog_read(
    conn: Conn, tenant: str
) -> None:
    """The API parses the body at the edge (no connection needed) and hands
    ``create_table`` the typed request; the table is the one the raw body makes."""
    spec = CreateTableRequest.parse(ORDERS)
    assert spec.primary_key == ["order_id"]
    assert spec.columns[0] == Column("order_id", "BIGINT", False)
    assert spec.compatibility == "backward"
    with pytest.raises(DuckMeshError) as bad:
        CreateTableRequest.parse(dict(ORDERS, primary_key=["nope"]))
    assert bad.value.error_code == "VALIDATION_FAILED"
    assert bad.value.context == {"field": "primary_key"}
    table = create(conn, tenant, spec)
    raw = create(conn, tenant, dict(ORDERS, name="orders_raw"))
    assert (table.columns, table.primary_key) == (raw.columns, raw.primary_key)
    assert (table.partition_by, table.retention) == (raw.partition_by, raw.retention)


def test_partition_and_retention_are_kept(conn: Conn, tenant: str) -> None:
    body = dict(ORDERS, partition_by={"event_time": "day"}, retention={"max_age_days": 30})
    table = create(conn, tenant, body)
    assert table.partition_by == {"event_time": "day"}
    assert table.retention == {"max_age_days": 30}


def test_create_table_twice(conn: Conn, tenant: str) -> None:
    create(conn, tenant, ORDERS)
    fails(conn, "TABLE_EXISTS", lambda c: commands.create_table(c, tenant, ORDERS))
    # DuckDB resolves names case-insensitively: "Orders" would collide in queries.
    err = fails(
        conn,
        "TABLE_EXISTS",
        lambda c: commands.create_table(c, tenant, dict(ORDERS, name="ORDERS")),
    )
    assert err.context == {"table": "orders"}


def test_same_name_in_another_tenant(conn: Conn, tenant: str) -> None:
    tx(conn, lambda c: commands.create_tenant(c, "globex"))
    a = create(conn, tenant, ORDERS)
    b = create(conn, "globex", ORDERS)
    assert a.table_id != b.table_id


def test_drop_then_create_again(conn: Conn, tenant: str) -> None:
    old = create(conn, tenant, ORDERS)
    tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))
    assert reads.get_table(conn, tenant, "orders") is None
    assert reads.list_tables(conn, tenant) == []
    assert reads.dropped_table_ids(conn, tenant) == {old.table_id}
    fails(conn, "TABLE_NOT_FOUND", lambda c: commands.drop_table(c, tenant, "orders"))
    fails(conn, "TABLE_NOT_FOUND", lambda c: commands.evolve_table(c, tenant, "orders", {}))
    new = create(conn, tenant, dict(ORDERS, columns=ORDERS["columns"][:2]))
    assert new.table_id != old.table_id
    assert len(new.columns) == 2
    # The dropped table's definition is still there for old snapshots.
    assert reads.tables_by_id(conn, tenant, [old.table_id])[old.table_id].columns == old.columns


_COL = {"name": "a", "type": "INTEGER"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (["not", "an", "object"], None),
        ({"name": "t", "columns": [_COL], "colour": "red"}, "colour"),
        ({"columns": [_COL]}, "name"),
        ({"name": "", "columns": [_COL]}, "name"),
        ({"name": "orders\n", "columns": [_COL]}, "name"),
        ({"name": "1orders", "columns": [_COL]}, "name"),
        ({"name": "_dm_orders", "columns": [_COL]}, "name"),
        ({"name": "o" * 64, "columns": [_COL]}, "name"),
        ({"name": 5, "columns": [_COL]}, "name"),
        ({"name": "t"}, "columns"),
        ({"name": "t", "columns": []}, "columns"),
        ({"name": "t", "columns": {"a": "INTEGER"}}, "columns"),
        ({"name": "t", "columns": ["a INTEGER"]}, "columns[0]"),
        ({"name": "t", "columns": [{"name": "a"}]}, "columns[0].type"),
        ({"name": "t", "columns": [{"name": "a", "type": "UUID"}]}, "columns[0].type"),
        ({"name": "t", "columns": [{"name": "a", "type": 4}]}, "columns[0].type"),
        ({"name": "t", "columns": [{"name": "a b", "type": "INT"}]}, "columns[0].name"),
        ({"name": "t", "columns": [{"name": "_dm_token", "type": "INT"}]}, "columns[0].name"),
        (
            {"name": "t", "columns": [{"name": "a", "type": "INT", "nullable": "no"}]},
            "columns[0].nullable",
        ),
        ({"name": "t", "columns": [{"name": "a", "type": "INT", "default": 1}]}, "columns[0]"),
        ({"name": "t", "columns": [_COL, _COL]}, "columns"),
        ({"name": "t", "columns": [_COL, {"name": "A", "type": "VARCHAR"}]}, "columns"),
        ({"name": "t", "columns": [_COL], "primary_key": "a"}, "primary_key"),
        ({"name": "t", "columns": [_COL], "primary_key": ["b"]}, "primary_key"),
        ({"name": "t", "columns": [_COL], "primary_key": ["a", "a"]}, "primary_key"),
        ({"name": "t", "columns": [_COL], "primary_key": ["A"]}, "primary_key"),
        (
            {"name": "t", "columns": [{"name": "a", "type": "INT[]"}], "primary_key": ["a"]},
            "primary_key",
        ),
        (
            {
                "name": "t",
                "columns": [{"name": "a", "type": "STRUCT(x INT)"}],
                "primary_key": ["a"],
            },
            "primary_key",
        ),
        (
            {"name": "t", "columns": [{"name": "a", "type": "JSON"}], "primary_key": ["a"]},
            "primary_key",
        ),
        ({"name": "t", "columns": [_COL], "compatibility": "none"}, "compatibility"),
        ({"name": "t", "columns": [_COL], "partition_by": {"event_time": "week"}}, "partition_by"),
        ({"name": "t", "columns": [_COL], "partition_by": "day"}, "partition_by"),
        ({"name": "t", "columns": [_COL], "retention": {"max_age_days": 0}}, "retention"),
        ({"name": "t", "columns": [_COL], "retention": {"max_age_days": True}}, "retention"),
        ({"name": "t", "columns": [_COL], "retention": {"max_age_days": "7"}}, "retention"),
        ({"name": "t", "columns": [_COL], "retention": {"days": 7}}, "retention"),
    ],
)
def test_create_table_validation(shared: Conn, body: dict[str, Any], field: str | None) -> None:
    before = reads.list_tables(shared, "acme")
    err = fails(shared, "VALIDATION_FAILED", lambda c: commands.create_table(c, "acme", body))
    assert err.context.get("field") == field
    assert reads.list_tables(shared, "acme") == before


# --- evolve_table and the schema registry -------------------------------------------


def test_evolution_adds_and_widens(conn: Conn, tenant: str) -> None:
    v1 = create(conn, tenant, ORDERS)
    v2 = evolve(
        conn,
        tenant,
        "orders",
        {
            "add_columns": [{"name": "note", "type": "text"}],
            "widen_columns": [{"name": "qty", "type": "BIGINT"}],
        },
    )
    assert v2.table_id == v1.table_id
    assert v2.schema_version == 2
    assert v2.columns == (
        Column("order_id", "BIGINT", False),
        Column("status", "VARCHAR", True),
        Column("amount", "DECIMAL(10,2)", True),
        Column("qty", "BIGINT", True),
        Column("note", "VARCHAR", True),
    )
    v3 = evolve(
        conn, tenant, "orders", {"widen_columns": [{"name": "amount", "type": "DECIMAL(14,4)"}]}
    )
    assert v3.schema_version == 3
    assert v3.column("amount") == Column("amount", "DECIMAL(14,4)", True)
    # Every version is kept and retrievable.
    assert reads.schema_columns(conn, v1.table_id, 1) == v1.columns
    assert reads.schema_columns(conn, v1.table_id, 2) == v2.columns
    assert reads.schema_columns(conn, v1.table_id, 3) == v3.columns
    versions = conn.execute(
        "SELECT version FROM table_schema_version WHERE table_id = %s ORDER BY 1", (v1.table_id,)
    ).fetchall()
    assert versions == [(1,), (2,), (3,)]
    last = events.read_stream(conn, commands.tables_stream(tenant))[-1].event
    assert isinstance(last, TableSchemaEvolved)
    assert last.changes == ["widen amount DECIMAL(10,2) -> DECIMAL(14,4)"]
    assert last.version == 3


def test_nullability_is_kept_when_widening(conn: Conn, tenant: str) -> None:
    body = {"name": "t", "columns": [{"name": "a", "type": "SMALLINT", "nullable": False}]}
    create(conn, tenant, body)
    table = evolve(conn, tenant, "t", {"widen_columns": [{"name": "a", "type": "INTEGER"}]})
    assert table.columns == (Column("a", "INTEGER", False),)


@pytest.mark.parametrize(
    "body",
    [
        {"add_columns": [{"name": "status", "type": "VARCHAR"}]},
        {"add_columns": [{"name": "STATUS", "type": "VARCHAR"}]},  # case-insensitive names
        {"add_columns": [{"name": "x", "type": "INT"}, {"name": "X", "type": "INT"}]},
        {"add_columns": [{"name": "x", "type": "INT", "nullable": False}]},
        {"widen_columns": [{"name": "qty", "type": "SMALLINT"}]},
        {"widen_columns": [{"name": "qty", "type": "VARCHAR"}]},
        {"widen_columns": [{"name": "status", "type": "JSON"}]},
        {"widen_columns": [{"name": "amount", "type": "DECIMAL(10,3)"}]},
        {"widen_columns": [{"name": "amount", "type": "DOUBLE"}]},
        {"widen_columns": [{"name": "order_id", "type": "DOUBLE"}]},
        {"widen_columns": [{"name": "nope", "type": "BIGINT"}]},
    ],
)
def test_incompatible_evolutions(shared: Conn, body: dict[str, Any]) -> None:
    before = reads.get_table(shared, "acme", "orders")
    fails(shared, "SCHEMA_INCOMPATIBLE", lambda c: commands.evolve_table(c, "acme", "orders", body))
    assert reads.get_table(shared, "acme", "orders") == before


def test_key_columns_cannot_change(conn: Conn, tenant: str) -> None:
    body = {"name": "t", "columns": [{"name": "k", "type": "INTEGER"}], "primary_key": ["k"]}
    create(conn, tenant, body)
    err = fails(
        conn,
        "SCHEMA_INCOMPATIBLE",
        lambda c: commands.evolve_table(
            c, tenant, "t", {"widen_columns": [{"name": "k", "type": "BIGINT"}]}
        ),
    )
    assert err.context["column"] == "k"


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        {"rename_columns": []},
        {"add_columns": {"name": "x", "type": "INT"}},
        {"widen_columns": "qty"},
        {"add_columns": [{"name": "x"}]},
        {"add_columns": [{"name": "x", "type": "INT", "nullable": "yes"}]},
    ],
)
def test_malformed_evolutions(shared: Conn, body: Any) -> None:
    fails(shared, "VALIDATION_FAILED", lambda c: commands.evolve_table(c, "acme", "orders", body))


def test_unknown_table(conn: Conn, tenant: str) -> None:
    fails(conn, "TABLE_NOT_FOUND", lambda c: commands.evolve_table(c, tenant, "nope", {}))
    fails(conn, "TABLE_NOT_FOUND", lambda c: commands.drop_table(c, tenant, "nope"))


def _schema_times(conn: Conn, table_id: str) -> list[dt.datetime]:
    rows = conn.execute(
        "SELECT created_at FROM table_schema_version WHERE table_id = %s ORDER BY version",
        (table_id,),
    ).fetchall()
    return [r[0] for r in rows]


def test_tables_as_of_returns_the_schema_of_that_time(conn: Conn, tenant: str) -> None:
    v1 = create(conn, tenant, ORDERS)
    create(conn, tenant, {"name": "clicks", "columns": [_COL]})
    v2 = evolve(conn, tenant, "orders", {"add_columns": [{"name": "note", "type": "VARCHAR"}]})
    t1, t2 = _schema_times(conn, v1.table_id)
    assert t1 < t2

    assert reads.tables_as_of(conn, tenant, t1 - US) == []
    at_t1 = {t.name: t for t in reads.tables_as_of(conn, tenant, t1)}
    assert list(at_t1) == ["orders"]  # clicks came later
    assert at_t1["orders"].columns == v1.columns
    assert at_t1["orders"].schema_version == 1
    before_t2 = {t.name: t for t in reads.tables_as_of(conn, tenant, t2 - US)}
    assert sorted(before_t2) == ["clicks", "orders"]
    assert before_t2["orders"].columns == v1.columns
    at_t2 = {t.name: t for t in reads.tables_as_of(conn, tenant, t2)}
    assert at_t2["orders"].columns == v2.columns
    assert at_t2["orders"].schema_version == 2

    tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))
    dropped = conn.execute(
        "SELECT dropped_at FROM table_def WHERE table_id = %s", (v1.table_id,)
    ).fetchone()
    assert dropped is not None
    assert [t.name for t in reads.tables_as_of(conn, tenant, dropped[0])] == ["clicks"]
    old = {t.name: t for t in reads.tables_as_of(conn, tenant, dropped[0] - US)}
    assert old["orders"].columns == v2.columns
    # And a new table of the same name is a different table with its own history.
    v1b = create(conn, tenant, {"name": "orders", "columns": [_COL]})
    now = reads.tables_as_of(conn, tenant, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    clicks = reads.get_table(conn, tenant, "clicks")
    assert clicks is not None
    assert {t.name: t.table_id for t in now} == {"clicks": clicks.table_id, "orders": v1b.table_id}


def test_table_changes_publish_schema_snapshots(conn: Conn, tenant: str) -> None:
    """Each table change publishes a snapshot of unchanged data, so a snapshot
    id binds exactly one set of schemas."""
    create(conn, tenant, ORDERS)
    evolve(conn, tenant, "orders", {"add_columns": [{"name": "note", "type": "VARCHAR"}]})
    tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))
    snaps = reads.list_snapshots(conn, tenant, None, 10)
    assert [s.snapshot_id for s in snaps] == [3, 2, 1]
    assert {s.kind for s in snaps} == {"schema"}
    assert [s.parent_id for s in snaps] == [2, 1, None]
    assert {s.max_visibility_token for s in snaps} == {0}
    assert events.stream_version(conn, commands.snapshots_stream(tenant)) == 3


def test_failed_commands_publish_nothing(conn: Conn, tenant: str) -> None:
    create(conn, tenant, ORDERS)
    head = reads.latest_snapshot(conn, tenant)
    fails(conn, "TABLE_EXISTS", lambda c: commands.create_table(c, tenant, ORDERS))
    fails(
        conn,
        "SCHEMA_INCOMPATIBLE",
        lambda c: commands.evolve_table(
            c, tenant, "orders", {"widen_columns": [{"name": "qty", "type": "SMALLINT"}]}
        ),
    )
    assert reads.latest_snapshot(conn, tenant) == head


_tenants = itertools.count()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_schema_registry_keeps_every_version(conn: Conn, data: st.DataObject) -> None:
    """Random table, random compatible evolutions: each is accepted, versions go
    1, 2, 3..., and every version and its time stay answerable."""
    tenant = f"reg{next(_tenants)}"
    tx(conn, lambda c: commands.create_tenant(c, tenant))
    body = data.draw(table_definitions(max_columns=4), label="table")
    history = [create(conn, tenant, body)]
    for _ in range(data.draw(st.integers(1, 4), label="evolutions")):
        change = data.draw(schema_evolutions(history[-1]), label="evolution")
        evolved = evolve(conn, tenant, history[-1].name, change)
        assert evolved.schema_version == history[-1].schema_version + 1
        # Old columns keep their order (and only ever widen); new ones come last.
        assert [c.name for c in evolved.columns[: len(history[-1].columns)]] == [
            c.name for c in history[-1].columns
        ]
        history.append(evolved)
    table_id = history[0].table_id
    times = _schema_times(conn, table_id)
    assert len(times) == len(history)
    assert times == sorted(times)
    for version, (table, when) in enumerate(zip(history, times, strict=True), start=1):
        assert table.schema_version == version
        assert reads.schema_columns(conn, table_id, version) == table.columns
        (as_of,) = reads.tables_as_of(conn, tenant, when)
        assert as_of.columns == table.columns
        assert as_of.schema_version == version


def _publish_file(dsn: str, tenant: str, table: str, file_id: str) -> None:
    """What a coordinator does: publish a snapshot adding a file (own connection)."""
    with psycopg.connect(dsn, autocommit=True) as other, other.transaction():
        head = reads.latest_snapshot(other, tenant)
        parent = head.snapshot_id if head else 0
        token = head.max_visibility_token if head else 0
        spec = FileSpec(file_id, table, 1, 100, token + 1, token + 1)
        snap = PublishSnapshot(
            tenant, parent + 1, "commit", token + 1, ((table, token + 1),), (spec,), ()
        )
        publish_snapshot(other, snap)


def test_drop_table_removes_the_tables_files(conn: Conn, dsn: str, tenant: str) -> None:
    create(conn, tenant, ORDERS)
    create(conn, tenant, {"name": "clicks", "columns": [_COL]})
    _publish_file(dsn, tenant, "orders", "f-orders")
    _publish_file(dsn, tenant, "clicks", "f-clicks")
    tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))
    head = reads.latest_snapshot(conn, tenant)
    assert head is not None
    assert head.kind == "schema"
    assert [f.file_id for f in reads.snapshot_files(conn, tenant, head.snapshot_id)] == ["f-clicks"]
    # The older snapshot still has both: time travel is unaffected.
    older = reads.snapshot_files(conn, tenant, head.snapshot_id - 1)
    assert sorted(f.file_id for f in older) == ["f-clicks", "f-orders"]


@pytest.mark.parametrize("when", ["before-head-read", "after-head-read"])
def test_drop_table_racing_a_commit_never_leaves_a_file_live(
    conn: Conn, dsn: str, tenant: str, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A commit adding a file to the table lands while the drop is in flight:
    the drop either removes that file too or conflicts (and is retried)."""
    create(conn, tenant, ORDERS)
    _publish_file(dsn, tenant, "orders", "f-1")
    real = reads.latest_snapshot
    fired: list[bool] = []

    def racing_latest_snapshot(c: Conn, tenant_id: str) -> Any:
        if not fired:
            fired.append(True)
            if when == "before-head-read":
                _publish_file(dsn, tenant, "orders", "f-2")
                return real(c, tenant_id)
            head = real(c, tenant_id)
            _publish_file(dsn, tenant, "orders", "f-2")
            return head
        return real(c, tenant_id)

    monkeypatch.setattr(reads, "latest_snapshot", racing_latest_snapshot)
    try:
        tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))
    except events.ConcurrencyConflict:
        assert when == "after-head-read"
        monkeypatch.setattr(reads, "latest_snapshot", real)
        tx(conn, lambda c: commands.drop_table(c, tenant, "orders"))  # the caller's retry
    assert fired
    head = real(conn, tenant)
    assert head is not None
    assert reads.snapshot_files(conn, tenant, head.snapshot_id) == []
