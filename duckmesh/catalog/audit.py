"""The audit trail: one tenant's administrative events, without secrets.

Key issuance and revocation, tenant changes, table DDL, pins and maintenance
runs are already events in the log; ``read_audit`` pages through them
oldest first by log position, so an exporter can poll with ``after`` = the
last position it stored and never miss or repeat an entry. Each entry shows
who (the event metadata's ``actor``, ``actor_key_id`` and ``trace_id``) and a
summary of the payload built from an allowlist per event type: a field not
listed here (``key_hash``, say) never leaves the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg

from duckmesh.events import decode

Conn = psycopg.Connection[Any]
Summary = Callable[[dict[str, Any]], dict[str, Any]]
_KEY_ID = re.compile(r"[0-9a-f]{16}")  # auth.keys.key_id_for: 16 hex digits


def _fields(*names: str) -> Summary:
    return lambda payload: {name: payload[name] for name in names}


SUMMARIES: dict[str, Summary] = {
    "TenantCreated": _fields("tenant_id", "name"),
    "TenantDisabled": _fields("tenant_id"),
    "TenantEnabled": _fields("tenant_id"),
    "ApiKeyIssued": _fields("key_id", "roles"),  # never key_hash
    "ApiKeyRevoked": _fields("key_id"),
    "TableCreated": _fields("table_id", "name", "columns", "primary_key", "compatibility"),
    "TableSchemaEvolved": _fields("table_id", "version", "changes"),
    "TableDropped": _fields("table_id"),
    "SnapshotPinned": _fields("snapshot_id", "reason"),
    "SnapshotUnpinned": _fields("snapshot_id"),
    "SnapshotsExpired": _fields("snapshot_ids"),
    "FilesCollected": lambda payload: {"file_count": len(payload["file_ids"])},
    "MaintenanceCompleted": _fields("kind", "summary"),
    "CatalogPruned": _fields("through_snapshot_id", "runs_before"),
    "TenantRestored": _fields(
        "backup_snapshot_id", "committed_token", "issued_token", "snapshot_gap", "token_gap"
    ),
}
# Event types deliberately left out of the audit trail, with the reason.
NOT_AUDITED: dict[str, str] = {
    "SnapshotPublished": "data commits and their schema/compaction snapshots:"
    " GET /v1/snapshots lists them; the change that caused one is audited",
}


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    position, recorded_at, event_type, schema_version, stream, payload, metadata = row
    current = decode(event_type, schema_version, payload).to_payload()
    actor = metadata.get("actor")
    key_id = metadata.get("actor_key_id")
    if key_id is None and isinstance(actor, str) and _KEY_ID.fullmatch(actor):
        key_id = actor  # events written before actor_key_id existed
    return {
        "position": position,
        "time": recorded_at.isoformat(),
        "event_type": event_type,
        "stream": stream,
        "actor": actor,
        "actor_key_id": key_id,
        "trace_id": metadata.get("trace_id"),
        "summary": SUMMARIES[event_type](current),
    }


def read_audit(conn: Conn, tenant_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` audit entries of ``tenant_id`` after log position ``after``."""
    rows = conn.execute(
        "SELECT position, recorded_at, event_type, schema_version, stream, payload, metadata"
        " FROM event_log WHERE tenant_id = %s AND event_type = ANY(%s) AND position > %s"
        " ORDER BY position LIMIT %s",
        (tenant_id, list(SUMMARIES), after, limit),
    ).fetchall()
    return [_entry(row) for row in rows]
