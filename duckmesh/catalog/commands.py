"""Catalog commands: validate, then append events (``journal``: log and projections).

Each command runs inside the caller's transaction on a sync connection and
retries nothing itself: a ``ConcurrencyConflict`` propagates so the caller
(the API's ``_with_retries``) can re-read and retry.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import psycopg

from duckmesh.auth import generate_key, hash_key, key_id_for
from duckmesh.catalog import reads
from duckmesh.catalog.journal import append, append_current
from duckmesh.catalog.model import (
    ROLES,
    Column,
    TableDef,
    parse_column,
)

# Re-exported: notify, the query service and tests find these here.
from duckmesh.catalog.snapshots import SNAPSHOTS_CHANNEL as SNAPSHOTS_CHANNEL
from duckmesh.catalog.snapshots import notify_snapshot as notify_snapshot
from duckmesh.catalog.snapshots import publish_removal
from duckmesh.catalog.snapshots import snapshots_stream as snapshots_stream
from duckmesh.catalog.table_requests import CreateTableRequest
from duckmesh.catalog.types import (
    can_widen,
    parse_type,
)
from duckmesh.errors import DuckMeshError
from duckmesh.events import stream_version
from duckmesh.events.types import (
    ApiKeyIssued,
    ApiKeyRevoked,
    Event,
    SnapshotPinned,
    SnapshotUnpinned,
    TableCreated,
    TableDropped,
    TableSchemaEvolved,
    TenantCreated,
    TenantDisabled,
    TenantEnabled,
)

Conn = psycopg.Connection[Any]
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: "$" allows a final "\n"
_MAX_TEXT = 200


def _check_text(value: Any, field: str, *, allow_empty: bool) -> str:
    """Free text stored in the log (names, reasons): no control characters.

    Postgres rejects NUL in text and jsonb, so without this check a name with
    one fails the append with a database error instead of a validation error.
    """
    if (
        not isinstance(value, str)
        or len(value) > _MAX_TEXT
        or (not value and not allow_empty)
        or any(ch < " " or "\x7f" <= ch <= "\x9f" or "\ud800" <= ch <= "\udfff" for ch in value)
    ):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"{field} must be a string of at most {_MAX_TEXT} characters without control"
            " characters",
            field=field,
        )
    return value


def stream_tenant(stream: str, kind: str) -> str | None:
    """The tenant of ``stream`` when it is a stream of ``kind`` (``tenant``,
    ``tables``, ``snapshots``, ``pins``, ``maintenance``), else None."""
    prefix, _, tenant_id = stream.partition(":")
    return tenant_id if prefix == kind and tenant_id else None


def tenant_stream(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


def tables_stream(tenant_id: str) -> str:
    return f"tables:{tenant_id}"


def pins_stream(tenant_id: str) -> str:
    return f"pins:{tenant_id}"


def maintenance_stream(tenant_id: str) -> str:
    return f"maintenance:{tenant_id}"


def record_maintenance(conn: Conn, tenant_id: str, event: Event, actor: str) -> None:
    """Append a maintenance event (expiry, collection, a run's summary) to the
    tenant's maintenance stream at its current version."""
    append_current(
        conn, maintenance_stream(tenant_id), event, tenant_id=tenant_id, metadata={"actor": actor}
    )


def publish_schema_snapshot(
    conn: Conn, tenant_id: str, actor: str, dropped_table_id: str | None = None
) -> int:
    """Publish a snapshot with unchanged data after a table change.

    Each snapshot then binds exactly one set of table schemas, so the same
    snapshot id and SQL always give the same answer, and the change is
    visible to the next query of "latest". Raises ConcurrencyConflict when a
    commit published first (the caller retries the whole command).

    With ``dropped_table_id`` the snapshot also removes that table's files,
    read as of the parent snapshot: a commit landing after that read moves the
    stream on, so the append conflicts instead of leaving a file behind.
    """
    return publish_removal(
        conn,
        tenant_id,
        actor,
        "schema",
        lambda files: [f.file_id for f in files if f.table_id == dropped_table_id],
    )


def create_tenant(conn: Conn, tenant_id: str, name: str | None = None, **meta: Any) -> None:
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            "tenant id must be 1-63 of a-z, 0-9, _ and -, starting with a letter or digit",
        )
    if name is not None:
        _check_text(name, "name", allow_empty=False)
    stream = tenant_stream(tenant_id)
    if stream_version(conn, stream) != 0:
        raise DuckMeshError("TENANT_EXISTS", f"tenant {tenant_id!r} exists", tenant=tenant_id)
    append(
        conn,
        stream,
        0,
        [TenantCreated(tenant_id, name or tenant_id)],
        tenant_id=tenant_id,
        metadata=meta,
    )


def _require_tenant(conn: Conn, tenant_id: str) -> int:
    version = stream_version(conn, tenant_stream(tenant_id))
    if version == 0:
        raise DuckMeshError("NOT_FOUND", f"no tenant {tenant_id!r}", tenant=tenant_id)
    return version


def disable_tenant(conn: Conn, tenant_id: str, **meta: Any) -> None:
    _append_to_tenant(conn, tenant_id, TenantDisabled(tenant_id), meta)


def enable_tenant(conn: Conn, tenant_id: str, **meta: Any) -> None:
    """Re-activate a disabled tenant (``duckmesh tenants enable``)."""
    _append_to_tenant(conn, tenant_id, TenantEnabled(tenant_id), meta)


def _append_to_tenant(
    conn: Conn, tenant_id: str, event: TenantDisabled | TenantEnabled, meta: dict[str, Any]
) -> None:
    """Append ``event`` to an existing tenant's stream (NOT_FOUND otherwise)."""
    version = _require_tenant(conn, tenant_id)
    append(conn, tenant_stream(tenant_id), version, [event], tenant_id=tenant_id, metadata=meta)


def issue_key(
    conn: Conn, tenant_id: str, roles: list[str], key: str | None = None, **meta: Any
) -> tuple[str, str]:
    """Issue a key; returns (key_id, plaintext). The plaintext is not kept."""
    bad = sorted(set(roles) - set(ROLES))
    if not roles or bad:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"roles must be a non-empty subset of {list(ROLES)}", bad=bad
        )
    version = _require_tenant(conn, tenant_id)
    plaintext = key or generate_key()
    digest = hash_key(plaintext)
    key_id = key_id_for(digest)
    ordered = [r for r in ROLES if r in roles]
    append(
        conn,
        tenant_stream(tenant_id),
        version,
        [ApiKeyIssued(key_id, tenant_id, digest, ordered)],
        tenant_id=tenant_id,
        metadata=meta,
    )
    return key_id, plaintext


def revoke_key(conn: Conn, key_id: str, **meta: Any) -> None:
    row = conn.execute(
        "SELECT tenant_id, revoked_at FROM api_key WHERE key_id = %s", (key_id,)
    ).fetchone()
    if row is None:
        raise DuckMeshError("NOT_FOUND", f"no key {key_id!r}")
    if row[1] is not None:
        return
    tenant_id = row[0]
    version = stream_version(conn, tenant_stream(tenant_id))
    append(
        conn,
        tenant_stream(tenant_id),
        version,
        [ApiKeyRevoked(key_id, tenant_id)],
        tenant_id=tenant_id,
        metadata=meta,
    )


def create_table(
    conn: Conn, tenant_id: str, body: CreateTableRequest | Any, **meta: Any
) -> TableDef:
    """Create a table from a parsed request (or the raw JSON object, parsed here)."""
    spec = body if isinstance(body, CreateTableRequest) else CreateTableRequest.parse(body)
    name = spec.name
    # DuckDB names are case-insensitive: "Orders" next to "orders" would make
    # the tenant's query views collide, so a live name is taken in any case.
    taken = conn.execute(
        "SELECT name FROM table_def WHERE tenant_id = %s AND lower(name) = lower(%s)"
        " AND dropped_at IS NULL",
        (tenant_id, name),
    ).fetchone()
    if taken is not None:
        raise DuckMeshError("TABLE_EXISTS", f"table {taken[0]!r} exists", table=taken[0])
    table_id = f"{name}-{secrets.token_hex(4)}"
    created = TableCreated(
        table_id,
        tenant_id,
        name,
        [c.to_json() for c in spec.columns],
        list(spec.primary_key),
        spec.partition_by,
        spec.retention,
        spec.compatibility,
    )
    _table_changed(conn, tenant_id, created, meta)
    table = reads.get_table(conn, tenant_id, name)
    assert table is not None
    return table


def evolve_table(conn: Conn, tenant_id: str, name: str, body: Any, **meta: Any) -> TableDef:
    """Apply a backward-compatible change: add nullable columns, widen types."""
    table = reads.get_table(conn, tenant_id, name)
    if table is None:
        raise DuckMeshError("TABLE_NOT_FOUND", f"no table {name!r}", table=name)
    if not isinstance(body, dict) or not body or set(body) - {"add_columns", "widen_columns"}:
        raise DuckMeshError(
            "VALIDATION_FAILED", "the body must have add_columns and/or widen_columns"
        )
    columns = list(table.columns)
    changes: list[str] = []
    add = body.get("add_columns") or []
    widen = body.get("widen_columns") or []
    if not isinstance(add, list) or not isinstance(widen, list):
        raise DuckMeshError("VALIDATION_FAILED", "add_columns and widen_columns must be arrays")
    for i, raw in enumerate(add):
        col = parse_column(raw, f"add_columns[{i}]")
        if any(c.name.lower() == col.name.lower() for c in columns):
            raise DuckMeshError(
                "SCHEMA_INCOMPATIBLE",
                f"column {col.name!r} already exists",
                column=col.name,
                change="add",
            )
        if not col.nullable:
            raise DuckMeshError(
                "SCHEMA_INCOMPATIBLE",
                f"added column {col.name!r} must be nullable (old rows have none)",
                column=col.name,
                change="add",
            )
        columns.append(col)
        changes.append(f"add {col.name} {col.type}")
    for i, raw in enumerate(widen):
        col = parse_column(raw, f"widen_columns[{i}]")
        positions = {c.name: n for n, c in enumerate(columns)}
        if col.name not in positions:
            raise DuckMeshError(
                "SCHEMA_INCOMPATIBLE",
                f"no column {col.name!r} to widen",
                column=col.name,
                change="widen",
            )
        j = positions[col.name]
        existing = columns[j]
        if not can_widen(parse_type(existing.type), parse_type(col.type)):
            raise DuckMeshError(
                "SCHEMA_INCOMPATIBLE",
                f"cannot change {col.name!r} from {existing.type} to {col.type}: only widening"
                " (SMALLINT->INTEGER->BIGINT, FLOAT->DOUBLE, larger DECIMAL) is backward"
                " compatible",
                column=col.name,
                change="widen",
                old_type=existing.type,
                new_type=col.type,
            )
        if col.name in table.primary_key:
            raise DuckMeshError(
                "SCHEMA_INCOMPATIBLE",
                f"key column {col.name!r} cannot change",
                column=col.name,
                change="widen",
            )
        columns[j] = Column(col.name, col.type, existing.nullable)
        changes.append(f"widen {col.name} {existing.type} -> {col.type}")
    if not changes:
        raise DuckMeshError(
            "VALIDATION_FAILED", "add_columns and widen_columns name no change to make"
        )
    evolution = TableSchemaEvolved(
        table.table_id, tenant_id, table.schema_version + 1, [c.to_json() for c in columns], changes
    )
    _table_changed(conn, tenant_id, evolution, meta)
    evolved = reads.get_table(conn, tenant_id, name)
    assert evolved is not None
    return evolved


def drop_table(conn: Conn, tenant_id: str, name: str, **meta: Any) -> None:
    table = reads.get_table(conn, tenant_id, name)
    if table is None:
        raise DuckMeshError("TABLE_NOT_FOUND", f"no table {name!r}", table=name)
    _table_changed(conn, tenant_id, TableDropped(table.table_id, tenant_id), meta, table.table_id)


def _table_changed(
    conn: Conn,
    tenant_id: str,
    event: TableCreated | TableSchemaEvolved | TableDropped,
    meta: dict[str, Any],
    dropped_table_id: str | None = None,
) -> None:
    """Append a table event and publish the schema snapshot that binds it.

    Concurrent changes of one tenant's tables conflict on the stream version,
    so names stay unique and schema versions gapless.
    """
    stream = tables_stream(tenant_id)
    append(conn, stream, stream_version(conn, stream), [event], tenant_id=tenant_id, metadata=meta)
    publish_schema_snapshot(conn, tenant_id, str(meta.get("actor", "catalog")), dropped_table_id)


def pin_snapshot(
    conn: Conn, tenant_id: str, snapshot_id: int, pinned: bool, reason: str, **meta: Any
) -> None:
    _check_text(reason, "reason", allow_empty=True)
    if reads.get_snapshot(conn, tenant_id, snapshot_id) is None:
        raise DuckMeshError(
            "SNAPSHOT_NOT_FOUND", f"no snapshot {snapshot_id}", snapshot_id=snapshot_id
        )
    stream = pins_stream(tenant_id)
    event = (
        SnapshotPinned(tenant_id, snapshot_id, reason)
        if pinned
        else SnapshotUnpinned(tenant_id, snapshot_id)
    )
    append(conn, stream, stream_version(conn, stream), [event], tenant_id=tenant_id, metadata=meta)
