"""``POST /v1/snapshots/restore``: a new snapshot whose tables equal an older one's.

A rollback of data, published like any snapshot (``catalog/snapshots.py``,
ADR 0010, kind ``restore``, ``restored_from`` the older id): for every table
that exists now, the files of the older snapshot are what the new one lists
— files added since are removed, files removed since are listed again under
new file ids (same objects: GC deletes an object only when no row still
needing it names its path). The watermark stays: tokens of the rolled-back
writes stay "visible" without their rows, and their idempotency keys stay
known, so a retry does not bring them back. Tables dropped since are not
restored; tables created since become empty. The older snapshot must not be
expired (its files may be gone). A ``MaintenanceCompleted`` of kind
``restore`` in the same transaction puts it in the audit trail with the key
that asked.
"""

from __future__ import annotations

from typing import Any

from duckmesh.catalog import reads
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.model import DataFile as ListedFile
from duckmesh.catalog.snapshots import SnapshotChange, publish_in
from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError
from duckmesh.events.types import MaintenanceCompleted
from duckmesh.storage import layout


def listed_again(f: ListedFile) -> layout.DataFile:
    return layout.DataFile(
        file_id=layout.new_file_id(),
        table_id=f.table_id,
        path=f.path,
        schema_version=f.schema_version,
        record_count=f.record_count,
        size_bytes=f.size_bytes,
        checksum=f.checksum,
        min_token=f.min_token,
        max_token=f.max_token,
        min_event_time=f.min_event_time,
        max_event_time=f.max_event_time,
    )


def restore_snapshot(conn: Conn, tenant: str, snapshot_id: int, actor: str) -> dict[str, Any]:
    """Publish (policy ABORT, in the caller's transaction) a snapshot whose
    tables equal those of ``snapshot_id``; returns the response body."""
    target = reads.get_snapshot(conn, tenant, snapshot_id)
    if target is None or target.expired:
        raise DuckMeshError(
            "SNAPSHOT_NOT_FOUND",
            f"no snapshot {snapshot_id}" + (" (expired)" if target else ""),
            snapshot_id=snapshot_id,
        )
    head = reads.latest_snapshot(conn, tenant)
    assert head is not None  # target exists
    if head.snapshot_id == snapshot_id:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"snapshot {snapshot_id} is already the latest",
            snapshot_id=snapshot_id,
        )
    live = {t.table_id: t.name for t in reads.list_tables(conn, tenant)}
    wanted = [f for f in reads.snapshot_files(conn, tenant, snapshot_id) if f.table_id in live]
    current = reads.snapshot_files(conn, tenant, head.snapshot_id)
    wanted_ids = {f.file_id for f in wanted}
    current_ids = {f.file_id for f in current}
    removed = [f.file_id for f in current if f.file_id not in wanted_ids]
    added = [listed_again(f) for f in wanted if f.file_id not in current_ids]
    change = SnapshotChange(
        tenant_id=tenant,
        kind="restore",
        created_by=actor,
        files_added=added,
        files_removed=removed,
        restored_from=snapshot_id,
    )
    summary: dict[str, Any] = {
        "restored_from": snapshot_id,
        "files_added": len(added),
        "files_removed": len(removed),
        "tables": sorted(live.values()),
    }

    def audit(c: Conn, new_id: int) -> None:
        done = MaintenanceCompleted(tenant, "restore", {"snapshot_id": new_id, **summary})
        record_maintenance(c, tenant, done, actor)

    published = publish_in(conn, change, head, after=audit)
    return {
        "snapshot_id": published.snapshot_id,
        "max_visibility_token": published.max_visibility_token,
        **summary,
    }
