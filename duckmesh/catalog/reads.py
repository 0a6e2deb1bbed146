"""Catalog queries over the projection tables (read side only)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from duckmesh.catalog.model import Column, DataFile, Snapshot, TableDef

Conn = psycopg.Connection[Any]

_TABLE_COLUMNS = (
    "t.table_id, t.tenant_id, t.name, t.primary_key, t.partition_by, t.retention,"
    " t.compatibility, t.schema_version, t.created_at, v.columns"
)


def _table(row: tuple[Any, ...]) -> TableDef:
    return TableDef(
        table_id=row[0],
        tenant_id=row[1],
        name=row[2],
        primary_key=tuple(row[3]),
        partition_by=row[4],
        retention=row[5],
        compatibility=row[6],
        schema_version=row[7],
        created_at=row[8],
        columns=tuple(Column(c["name"], c["type"], c["nullable"]) for c in row[9]),
    )


def get_table(conn: Conn, tenant_id: str, name: str) -> TableDef | None:
    row = conn.execute(
        f"SELECT {_TABLE_COLUMNS} FROM table_def t JOIN table_schema_version v"
        " ON v.table_id = t.table_id AND v.version = t.schema_version"
        " WHERE t.tenant_id = %s AND t.name = %s AND t.dropped_at IS NULL",
        (tenant_id, name),
    ).fetchone()
    return _table(row) if row else None


def _tables_by_id(conn: Conn, tenant_id: str, table_ids: list[str]) -> Any:
    return conn.execute(
        f"SELECT {_TABLE_COLUMNS}, t.dropped_at FROM table_def t JOIN table_schema_version v"
        " ON v.table_id = t.table_id AND v.version = t.schema_version"
        " WHERE t.tenant_id = %s AND t.table_id = ANY(%s)",
        (tenant_id, table_ids),
    )


def tables_by_id(conn: Conn, tenant_id: str, table_ids: list[str]) -> dict[str, TableDef]:
    """Current definitions of tables by id, dropped ones included."""
    return {r[0]: _table(r[:10]) for r in _tables_by_id(conn, tenant_id, table_ids).fetchall()}


def _dropped_table_ids(conn: Conn, tenant_id: str) -> Any:
    return conn.execute(
        "SELECT table_id FROM table_def WHERE tenant_id = %s AND dropped_at IS NOT NULL",
        (tenant_id,),
    )


def dropped_table_ids(conn: Conn, tenant_id: str) -> set[str]:
    return {r[0] for r in _dropped_table_ids(conn, tenant_id).fetchall()}


def commit_plan(
    conn: Conn, tenant_id: str, table_ids: list[str]
) -> tuple[Snapshot | None, dict[str, TableDef], set[str]]:
    """What a commit reads before building files: the latest snapshot, the
    batch's tables by id and the tenant's dropped table ids. The three
    statements are sent before any is read, so in a pipeline
    (``Database.call(pipeline=True)``) they share one round trip."""
    head = _latest_snapshot(conn, tenant_id)
    tables = _tables_by_id(conn, tenant_id, table_ids)
    dropped = _dropped_table_ids(conn, tenant_id)
    row = head.fetchone()
    return (
        _snapshot(row) if row else None,
        {r[0]: _table(r[:10]) for r in tables.fetchall()},
        {r[0] for r in dropped.fetchall()},
    )


def list_tables(conn: Conn, tenant_id: str) -> list[TableDef]:
    rows = conn.execute(
        f"SELECT {_TABLE_COLUMNS} FROM table_def t JOIN table_schema_version v"
        " ON v.table_id = t.table_id AND v.version = t.schema_version"
        " WHERE t.tenant_id = %s AND t.dropped_at IS NULL ORDER BY t.name",
        (tenant_id,),
    ).fetchall()
    return [_table(r) for r in rows]


def column_names(conn: Conn, versions: set[tuple[str, int]]) -> dict[tuple[str, int], set[str]]:
    """Column names of many (table id, schema version) pairs in one query."""
    if not versions:
        return {}
    ids, numbers = zip(*sorted(versions), strict=True)
    rows = conn.execute(
        "SELECT s.table_id, s.version, s.columns FROM table_schema_version s"
        " JOIN unnest(%s::text[], %s::int[]) AS k(table_id, version)"
        " ON s.table_id = k.table_id AND s.version = k.version",
        (list(ids), list(numbers)),
    ).fetchall()
    return {(r[0], r[1]): {c["name"] for c in r[2]} for r in rows}


def schema_columns(conn: Conn, table_id: str, version: int) -> tuple[Column, ...]:
    row = conn.execute(
        "SELECT columns FROM table_schema_version WHERE table_id = %s AND version = %s",
        (table_id, version),
    ).fetchone()
    assert row is not None
    return tuple(Column(c["name"], c["type"], c["nullable"]) for c in row[0])


_SNAPSHOT_COLUMNS = (
    "tenant_id, snapshot_id, kind, created_at, created_by, max_visibility_token, parent_id,"
    " expired_at IS NOT NULL"
)


def _snapshot(row: tuple[Any, ...]) -> Snapshot:
    return Snapshot(*row)


def _latest_snapshot(conn: Conn, tenant_id: str) -> Any:
    return conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE tenant_id = %s"
        " ORDER BY snapshot_id DESC LIMIT 1",
        (tenant_id,),
    )


def latest_snapshot(conn: Conn, tenant_id: str) -> Snapshot | None:
    row = _latest_snapshot(conn, tenant_id).fetchone()
    return _snapshot(row) if row else None


def get_snapshot(conn: Conn, tenant_id: str, snapshot_id: int) -> Snapshot | None:
    row = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE tenant_id = %s AND snapshot_id = %s",
        (tenant_id, snapshot_id),
    ).fetchone()
    return _snapshot(row) if row else None


def snapshot_at(conn: Conn, tenant_id: str, when: dt.datetime) -> Snapshot | None:
    row = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE tenant_id = %s AND created_at <= %s"
        " ORDER BY snapshot_id DESC LIMIT 1",
        (tenant_id, when),
    ).fetchone()
    return _snapshot(row) if row else None


def list_snapshots(conn: Conn, tenant_id: str, before: int | None, limit: int) -> list[Snapshot]:
    rows = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshot WHERE tenant_id = %s"
        " AND (%s::bigint IS NULL OR snapshot_id < %s) ORDER BY snapshot_id DESC LIMIT %s",
        (tenant_id, before, before, limit),
    ).fetchall()
    return [_snapshot(r) for r in rows]


_FILE_COLUMNS = (
    "file_id, table_id, path, schema_version, record_count, size_bytes, checksum,"
    " min_token, max_token, added_in, removed_in, min_event_time, max_event_time"
)


def snapshot_files(conn: Conn, tenant_id: str, snapshot_id: int) -> list[DataFile]:
    """Every data file that is part of ``snapshot_id``."""
    rows = conn.execute(
        f"SELECT {_FILE_COLUMNS} FROM data_file WHERE tenant_id = %s AND added_in <= %s"
        " AND (removed_in IS NULL OR removed_in > %s) ORDER BY table_id, min_token",
        (tenant_id, snapshot_id, snapshot_id),
    ).fetchall()
    return [DataFile(*r) for r in rows]


def stored_bytes(conn: Conn, tenant_id: str) -> int:
    """Bytes of the tenant's live data files (those of its latest snapshot)."""
    row = conn.execute(
        "SELECT coalesce(sum(size_bytes), 0) FROM data_file"
        " WHERE tenant_id = %s AND removed_in IS NULL",
        (tenant_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def table_watermarks(conn: Conn, tenant_id: str, snapshot_id: int) -> dict[str, int]:
    """Per-table watermark as of ``snapshot_id`` (latest row at or before it)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (table_id) table_id, watermark FROM snapshot_table_watermark"
        " WHERE tenant_id = %s AND snapshot_id <= %s ORDER BY table_id, snapshot_id DESC",
        (tenant_id, snapshot_id),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def tenant_ids(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tenant_id FROM tenant ORDER BY 1").fetchall()]


def lookup_key(conn: Conn, key_id: str) -> tuple[str, str, list[str], bool, str] | None:
    """(tenant_id, key_hash, roles, usable, tenant status) for a key id."""
    row = conn.execute(
        "SELECT k.tenant_id, k.key_hash, k.roles, k.revoked_at IS NULL, t.status"
        " FROM api_key k JOIN tenant t USING (tenant_id) WHERE k.key_id = %s",
        (key_id,),
    ).fetchone()
    return (row[0], row[1], list(row[2]), row[3], row[4]) if row else None


def tables_as_of(conn: Conn, tenant_id: str, when: dt.datetime) -> list[TableDef]:
    """Tables that existed at ``when``, each with the schema version of that time.

    Queries against an old snapshot bind these, so the same snapshot and SQL
    give the same columns and rows even after later schema changes.
    """
    rows = conn.execute(
        "SELECT t.table_id, t.tenant_id, t.name, t.primary_key, t.partition_by, t.retention,"
        " t.compatibility, v.version, t.created_at, v.columns"
        " FROM table_def t JOIN LATERAL ("
        "   SELECT version, columns FROM table_schema_version s"
        "   WHERE s.table_id = t.table_id AND s.created_at <= %s"
        "   ORDER BY version DESC LIMIT 1) v ON true"
        " WHERE t.tenant_id = %s AND t.created_at <= %s"
        " AND (t.dropped_at IS NULL OR t.dropped_at > %s) ORDER BY t.name",
        (when, tenant_id, when, when),
    ).fetchall()
    return [_table(r) for r in rows]
