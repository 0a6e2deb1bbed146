"""How each event changes the catalog tables.

One small function per event type, registered in ``_PROJECTORS``. They use
only the event, its position and its ``recorded_at`` (never ``now()``), and
unqualified table names, so replay can run them into a scratch schema and get
identical rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from duckmesh.events.store import RecordedEvent
from duckmesh.events.types import (
    ApiKeyIssued,
    ApiKeyRevoked,
    CatalogPruned,
    Event,
    FilesCollected,
    MaintenanceCompleted,
    SnapshotPinned,
    SnapshotPublished,
    SnapshotsExpired,
    SnapshotUnpinned,
    TableCreated,
    TableDropped,
    TableSchemaEvolved,
    TenantCreated,
    TenantDisabled,
    TenantEnabled,
    TenantRestored,
)

Conn = psycopg.Connection[Any]
Projector = Callable[[Conn, RecordedEvent, Any], None]

# Every table written here; replay rebuilds exactly these.
PROJECTION_TABLES = (
    "tenant",
    "api_key",
    "table_def",
    "table_schema_version",
    "snapshot",
    "snapshot_table_watermark",
    "data_file",
    "snapshot_pin",
    "maintenance_run",
    "restore_gap",
)


def _tenant_created(conn: Conn, rec: RecordedEvent, ev: TenantCreated) -> None:
    conn.execute(
        "INSERT INTO tenant (tenant_id, name, status, created_at) VALUES (%s, %s, 'active', %s)",
        (ev.tenant_id, ev.name, rec.recorded_at),
    )


def _tenant_disabled(conn: Conn, rec: RecordedEvent, ev: TenantDisabled) -> None:
    conn.execute("UPDATE tenant SET status = 'disabled' WHERE tenant_id = %s", (ev.tenant_id,))


def _tenant_enabled(conn: Conn, rec: RecordedEvent, ev: TenantEnabled) -> None:
    conn.execute("UPDATE tenant SET status = 'active' WHERE tenant_id = %s", (ev.tenant_id,))


def _key_issued(conn: Conn, rec: RecordedEvent, ev: ApiKeyIssued) -> None:
    conn.execute(
        "INSERT INTO api_key (key_id, tenant_id, key_hash, roles, created_at)"
        " VALUES (%s, %s, %s, %s, %s)",
        (ev.key_id, ev.tenant_id, ev.key_hash, list(ev.roles), rec.recorded_at),
    )


def _key_revoked(conn: Conn, rec: RecordedEvent, ev: ApiKeyRevoked) -> None:
    conn.execute(
        "UPDATE api_key SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
        (rec.recorded_at, ev.key_id),
    )


def _table_created(conn: Conn, rec: RecordedEvent, ev: TableCreated) -> None:
    conn.execute(
        "INSERT INTO table_def (table_id, tenant_id, name, primary_key, partition_by, retention,"
        " compatibility, schema_version, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s)",
        (
            ev.table_id,
            ev.tenant_id,
            ev.name,
            list(ev.primary_key),
            None if ev.partition_by is None else json.dumps(ev.partition_by),
            None if ev.retention is None else json.dumps(ev.retention),
            ev.compatibility,
            rec.recorded_at,
        ),
    )
    conn.execute(
        "INSERT INTO table_schema_version (table_id, version, columns, created_at)"
        " VALUES (%s, 1, %s, %s)",
        (ev.table_id, json.dumps(ev.columns), rec.recorded_at),
    )


def _table_evolved(conn: Conn, rec: RecordedEvent, ev: TableSchemaEvolved) -> None:
    conn.execute(
        "UPDATE table_def SET schema_version = %s WHERE table_id = %s", (ev.version, ev.table_id)
    )
    conn.execute(
        "INSERT INTO table_schema_version (table_id, version, columns, created_at)"
        " VALUES (%s, %s, %s, %s)",
        (ev.table_id, ev.version, json.dumps(ev.columns), rec.recorded_at),
    )


def _table_dropped(conn: Conn, rec: RecordedEvent, ev: TableDropped) -> None:
    conn.execute(
        "UPDATE table_def SET dropped_at = %s WHERE table_id = %s", (rec.recorded_at, ev.table_id)
    )


def _snapshot_published(conn: Conn, rec: RecordedEvent, ev: SnapshotPublished) -> None:
    conn.execute(
        "INSERT INTO snapshot (tenant_id, snapshot_id, kind, created_at, created_by,"
        " max_visibility_token, parent_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            ev.tenant_id,
            ev.snapshot_id,
            ev.kind,
            rec.recorded_at,
            ev.created_by,
            ev.max_visibility_token,
            ev.parent_id,
        ),
    )
    if ev.table_watermarks:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO snapshot_table_watermark (tenant_id, table_id, snapshot_id, watermark)"
                " VALUES (%s, %s, %s, %s)",
                [(ev.tenant_id, t, ev.snapshot_id, w) for t, w in ev.table_watermarks.items()],
            )
    if ev.files_added:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO data_file (file_id, tenant_id, table_id, path, format, schema_version,"
                " record_count, size_bytes, checksum, min_token, max_token, min_event_time,"
                " max_event_time, created_at, added_in)"
                " VALUES (%s, %s, %s, %s, 'parquet', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        f.file_id,
                        ev.tenant_id,
                        f.table_id,
                        f.path,
                        f.schema_version,
                        f.record_count,
                        f.size_bytes,
                        f.checksum,
                        f.min_token,
                        f.max_token,
                        f.min_event_time,
                        f.max_event_time,
                        rec.recorded_at,
                        ev.snapshot_id,
                    )
                    for f in ev.files_added
                ],
            )
    if ev.files_removed:
        conn.execute(
            "UPDATE data_file SET removed_in = %s"
            " WHERE tenant_id = %s AND file_id = ANY(%s) AND removed_in IS NULL",
            (ev.snapshot_id, ev.tenant_id, list(ev.files_removed)),
        )


def _pinned(conn: Conn, rec: RecordedEvent, ev: SnapshotPinned) -> None:
    conn.execute(
        "INSERT INTO snapshot_pin (tenant_id, snapshot_id, reason, pinned_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, snapshot_id) DO NOTHING",
        (ev.tenant_id, ev.snapshot_id, ev.reason, rec.recorded_at),
    )


def _unpinned(conn: Conn, rec: RecordedEvent, ev: SnapshotUnpinned) -> None:
    conn.execute(
        "DELETE FROM snapshot_pin WHERE tenant_id = %s AND snapshot_id = %s",
        (ev.tenant_id, ev.snapshot_id),
    )


def _expired(conn: Conn, rec: RecordedEvent, ev: SnapshotsExpired) -> None:
    conn.execute(
        "UPDATE snapshot SET expired_at = %s"
        " WHERE tenant_id = %s AND snapshot_id = ANY(%s) AND expired_at IS NULL",
        (rec.recorded_at, ev.tenant_id, list(ev.snapshot_ids)),
    )


def _collected(conn: Conn, rec: RecordedEvent, ev: FilesCollected) -> None:
    conn.execute(
        "UPDATE data_file SET collected_at = %s WHERE tenant_id = %s AND file_id = ANY(%s)",
        (rec.recorded_at, ev.tenant_id, list(ev.file_ids)),
    )


def _maintenance(conn: Conn, rec: RecordedEvent, ev: MaintenanceCompleted) -> None:
    conn.execute(
        "INSERT INTO maintenance_run (position, tenant_id, kind, finished_at, summary)"
        " VALUES (%s, %s, %s, %s, %s)",
        (rec.position, ev.tenant_id, ev.kind, rec.recorded_at, json.dumps(ev.summary)),
    )


# Snapshot rows ``CatalogPruned`` deletes (parameters ``t``, ``through``):
# expired, unpinned, and not the snapshot that removed a file GC has yet to
# collect (GC dates a file by the snapshot that removed it).
PRUNABLE_SNAPSHOTS = (
    "SELECT snapshot_id FROM snapshot s WHERE s.tenant_id = %(t)s"
    " AND s.snapshot_id <= %(through)s AND s.expired_at IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM snapshot_pin p"
    "   WHERE p.tenant_id = s.tenant_id AND p.snapshot_id = s.snapshot_id)"
    " AND NOT EXISTS (SELECT 1 FROM data_file f WHERE f.tenant_id = s.tenant_id"
    "   AND f.removed_in = s.snapshot_id AND f.collected_at IS NULL)"
)


def _pruned(conn: Conn, rec: RecordedEvent, ev: CatalogPruned) -> None:
    conn.execute(
        "DELETE FROM data_file WHERE tenant_id = %s AND collected_at IS NOT NULL", (ev.tenant_id,)
    )
    gone = PRUNABLE_SNAPSHOTS
    args = {"t": ev.tenant_id, "through": ev.through_snapshot_id}
    conn.execute(
        f"DELETE FROM snapshot_table_watermark WHERE tenant_id = %(t)s AND snapshot_id IN ({gone})",
        args,
    )
    conn.execute(f"DELETE FROM snapshot WHERE tenant_id = %(t)s AND snapshot_id IN ({gone})", args)
    conn.execute(
        "DELETE FROM maintenance_run WHERE tenant_id = %s AND position < %s",
        (ev.tenant_id, ev.runs_before),
    )


def _restored(conn: Conn, rec: RecordedEvent, ev: TenantRestored) -> None:
    conn.execute(
        "INSERT INTO restore_gap (position, tenant_id, restored_at, backup_snapshot_id,"
        " committed_token, issued_token, snapshot_gap, token_gap)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            rec.position,
            ev.tenant_id,
            rec.recorded_at,
            ev.backup_snapshot_id,
            ev.committed_token,
            ev.issued_token,
            ev.snapshot_gap,
            ev.token_gap,
        ),
    )


_PROJECTORS: dict[type[Event], Projector] = {
    TenantCreated: _tenant_created,
    TenantDisabled: _tenant_disabled,
    TenantEnabled: _tenant_enabled,
    ApiKeyIssued: _key_issued,
    ApiKeyRevoked: _key_revoked,
    TableCreated: _table_created,
    TableSchemaEvolved: _table_evolved,
    TableDropped: _table_dropped,
    SnapshotPublished: _snapshot_published,
    SnapshotPinned: _pinned,
    SnapshotUnpinned: _unpinned,
    SnapshotsExpired: _expired,
    FilesCollected: _collected,
    MaintenanceCompleted: _maintenance,
    CatalogPruned: _pruned,
    TenantRestored: _restored,
}


def apply(conn: Conn, rec: RecordedEvent) -> None:
    """Project one recorded event into the catalog tables on ``search_path``."""
    _PROJECTORS[type(rec.event)](conn, rec, rec.event)
