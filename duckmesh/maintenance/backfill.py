"""``duckmesh backfill TABLE``: re-derive a table's data files.

Why it exists: a table's files can be lost or wrong (a repair removed a
damaged file with its rows, a bad restore, a bug in how files were built),
while the rows they came from are still known. What it does, for one table
of one tenant:

- ``from_bus`` (default): rebuilds every row the bus still holds for the
  table up to the head's watermark (records and stored upload batches, less
  the quarantined ones) with the coordinator's own builders, and replaces
  ALL the table's files of the latest snapshot with the rebuilt ones. It is
  refused (``BackfillRefused``) when retention already pruned tokens the
  table's files cover: those rows would be lost (ADR 0016, the bus keeps
  rows for ``DUCKMESH_IDEMPOTENCY_WINDOW_MS``).
- ``from_snapshot=N``: lists again (new file ids, same objects) the table's
  files of snapshot N in place of the latest snapshot's files up to N's
  table watermark; files committed after N stay.

Either way ONE snapshot (kind ``backfill``, watermark unchanged) is
published through the one publisher (ADR 0010, policy REBASE: the coordinator
may commit meanwhile; a compaction or repair of the same files refuses it),
in the same transaction as a ``MaintenanceCompleted`` event of kind
``backfill``. Idempotent: when the rebuilt files equal the live ones
(same SHA-256s) nothing is published. Resumable: files are written under
fresh keys and listed only by the publish, so a run killed half-way leaves
orphans for GC and a rerun starts over; rows are never listed twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog

from duckmesh.bus import BusRecord, UploadBatch
from duckmesh.catalog import reads, snapshots
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.model import DataFile as ListedFile
from duckmesh.catalog.model import Snapshot, TableDef
from duckmesh.catalog.snapshot_restore import listed_again
from duckmesh.catalog.snapshots import ConflictPolicy, SnapshotChange
from duckmesh.coordinator.columnar import UploadRows, build_rows
from duckmesh.coordinator.parquet import PartitionRows, build_tables
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from duckmesh.events.types import MaintenanceCompleted
from duckmesh.maintenance.repair import damage
from duckmesh.storage import layout
from duckmesh.storage.protocol import ObjectStore
from duckmesh.supervisors.faults import FaultPoints

log = structlog.get_logger("duckmesh.backfill")

# Progress: called with (files done, files in all) as files are written.
Progress = Callable[[int, int], None]


class BackfillRefused(Exception):
    """The source no longer holds what the table needs (one line for the operator)."""


@attrs.frozen
class BackfillSummary:
    table: str
    source: str  # "bus" or "snapshot N"
    files_removed: int
    files_added: int
    records: int  # rows in the table's files afterwards (those replaced)
    unchanged: bool  # the live files already were what the source gives
    snapshot_id: int | None  # the backfill snapshot; None when unchanged

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class _Plan:
    table: TableDef
    head: Snapshot
    live: list[ListedFile]  # the table's files in the head that are replaced


_RECORDS = (
    "SELECT r.token, r.table_id, r.op, r.payload, r.event_time, r.ingested_at,"
    " r.schema_version, NULL FROM bus_record r WHERE r.tenant_id = %(t)s AND r.table_id = %(tb)s"
    " AND r.token <= %(hi)s AND NOT EXISTS (SELECT 1 FROM bus_quarantine q"
    " WHERE q.tenant_id = r.tenant_id AND q.token = r.token) ORDER BY r.token"
)
_UPLOADS = (
    "SELECT first_token, last_token, table_id, op, event_time_column, ingested_at,"
    " schema_version, data FROM bus_batch WHERE tenant_id = %(t)s AND table_id = %(tb)s"
    " AND last_token <= %(hi)s ORDER BY first_token"
)


def _plan(conn: Conn, tenant: str, table: str) -> _Plan:
    tdef = reads.get_table(conn, tenant, table)
    if tdef is None:
        raise DuckMeshError("TABLE_NOT_FOUND", f"no table {table!r} in tenant {tenant!r}")
    head = reads.latest_snapshot(conn, tenant)
    if head is None:
        raise BackfillRefused(f"tenant {tenant!r} has no snapshot yet: nothing to backfill")
    files = reads.snapshot_files(conn, tenant, head.snapshot_id)
    return _Plan(tdef, head, [f for f in files if f.table_id == tdef.table_id])


def _check_retained(conn: Conn, tenant: str, plan: _Plan) -> None:
    """Refuse when retention pruned tokens the table's live files cover."""
    row = conn.execute("SELECT pruned_token FROM bus_scope WHERE scope = %s", (tenant,)).fetchone()
    pruned = int(row[0]) if row else 0
    first = min((f.min_token for f in plan.live), default=None)
    if first is not None and pruned >= first:
        raise BackfillRefused(
            f"the bus no longer holds tokens {first}..{pruned} of table {plan.table.name!r}"
            " (pruned past DUCKMESH_IDEMPOTENCY_WINDOW_MS); use --from-snapshot N"
        )


def _bus_rows(conn: Conn, tenant: str, plan: _Plan) -> tuple[list[BusRecord], list[UploadRows]]:
    """The table's retained, committed, not quarantined bus rows."""
    _check_retained(conn, tenant, plan)
    args = {"t": tenant, "tb": plan.table.table_id, "hi": plan.head.max_visibility_token}
    records = [BusRecord._make(r) for r in conn.execute(_RECORDS, args).fetchall()]
    quarantined = {
        int(r[0])
        for r in conn.execute(
            "SELECT token FROM bus_quarantine WHERE tenant_id = %(t)s AND table_id = %(tb)s",
            args,
        ).fetchall()
    }
    uploads = [
        UploadRows.decode(_upload(r)).without(quarantined)
        for r in conn.execute(_UPLOADS, args).fetchall()
    ]
    # A prune commits its deletes with the new pruned_token: one that ran
    # between the reads above shows here.
    _check_retained(conn, tenant, plan)
    return records, uploads


def _upload(row: Any) -> UploadBatch:
    first, last, table_id, op, time_column, ingested_at, version, data = row
    return UploadBatch(first, last, table_id, op, time_column, ingested_at, version, bytes(data))


def _partitions(
    table: TableDef, records: list[BusRecord], uploads: list[UploadRows]
) -> list[PartitionRows]:
    parts, rejected = build_tables(table, records) if records else ([], [])
    if rejected:
        log.warning("backfill skipped rows the coordinator rejects", count=len(rejected))
    for rows in uploads:
        if len(rows):
            parts.extend(build_rows(table, rows))
    return parts


def _stage(
    store: ObjectStore, parts: list[PartitionRows], staged: list[tuple[Path, int, str]]
) -> None:
    """Write each partition to a scratch file: appends (path, size, sha256)."""
    for rows in parts:
        scratch = store.scratch_path(".parquet")
        staged.append((scratch, 0, ""))  # removed by the caller even if the write fails
        size, checksum = layout.write_parquet(rows.arrow, scratch)
        staged[-1] = (scratch, size, checksum)


def _put(
    store: ObjectStore,
    tenant: str,
    parts: list[PartitionRows],
    staged: list[tuple[Path, int, str]],
    snapshot_id: int,
    faults: FaultPoints,
    progress: Progress,
) -> list[layout.DataFile]:
    """Move the staged files in place under fresh keys (orphans until published;
    ``snapshot_id`` is the one the keys name, as a commit's do)."""
    added: list[layout.DataFile] = []
    for seq, (rows, (scratch, size, checksum)) in enumerate(zip(parts, staged, strict=True), 1):
        key = layout.object_key(tenant, rows.table.table_id, rows.partition, snapshot_id, seq)
        store.put_file(scratch, key, checksum)
        added.append(rows.data_file(key, size, checksum))
        progress(seq, len(parts))
        faults.hit("backfill.after_file_write")
    return added


def _from_bus(
    db: Database,
    store: ObjectStore,
    tenant: str,
    plan: _Plan,
    faults: FaultPoints,
    progress: Progress,
) -> list[layout.DataFile] | None:
    """The rebuilt files, or None when they equal the live ones."""
    records, uploads = db.call(lambda c: _bus_rows(c, tenant, plan), transaction=False)
    parts = _partitions(plan.table, records, uploads)
    staged: list[tuple[Path, int, str]] = []
    try:
        _stage(store, parts, staged)
        if sorted(s[2] for s in staged) == sorted(f.checksum for f in plan.live):
            return None
        return _put(store, tenant, parts, staged, plan.head.snapshot_id + 1, faults, progress)
    finally:
        for scratch, _, _ in staged:
            if scratch.exists():
                os.unlink(scratch)


def _from_snapshot(
    db: Database, store: ObjectStore, tenant: str, plan: _Plan, snapshot_id: int
) -> tuple[list[ListedFile], list[layout.DataFile] | None]:
    """The live files up to N's table watermark and N's files of the table
    listed again (None when they are the same objects)."""

    def load(conn: Conn) -> tuple[Snapshot | None, list[ListedFile]]:
        target = reads.get_snapshot(conn, tenant, snapshot_id)
        files = reads.snapshot_files(conn, tenant, snapshot_id) if target else []
        return target, [f for f in files if f.table_id == plan.table.table_id]

    target, old = db.call(load, transaction=False)
    if target is None or target.expired:
        gone = " (expired)" if target else ""
        raise BackfillRefused(f"snapshot {snapshot_id} is not available{gone}")
    upto = max((f.max_token for f in old), default=0)
    straddling = [f.path for f in plan.live if f.min_token <= upto < f.max_token]
    if straddling:
        raise BackfillRefused(
            f"file {straddling[0]} mixes rows before and after snapshot {snapshot_id}"
            " (compacted since); backfill from the bus instead"
        )
    for f in old:
        if (wrong := damage(store, f)) is not None:
            raise BackfillRefused(f"snapshot {snapshot_id}'s file {f.path} is {wrong}")
    replaced = [f for f in plan.live if f.max_token <= upto]
    if sorted(f.path for f in replaced) == sorted(f.path for f in old):
        return replaced, None
    return replaced, [listed_again(f) for f in old]


def backfill_table(
    db: Database,
    store: ObjectStore,
    tenant: str,
    table: str,
    *,
    from_snapshot: int | None = None,
    faults: FaultPoints | None = None,
    progress: Progress | None = None,
    actor: str = "backfill",
) -> BackfillSummary:
    """Re-derive ``table``'s files and publish one snapshot (see module doc)."""
    faults = faults or FaultPoints()
    plan = db.call(lambda c: _plan(c, tenant, table), transaction=False)
    replaced = plan.live
    if from_snapshot is None:
        source = "bus"
        added = _from_bus(db, store, tenant, plan, faults, progress or (lambda _d, _n: None))
    else:
        source = f"snapshot {from_snapshot}"
        replaced, added = _from_snapshot(db, store, tenant, plan, from_snapshot)
    summary = BackfillSummary(
        table=table,
        source=source,
        files_removed=0 if added is None else len(replaced),
        files_added=0 if added is None else len(added),
        records=sum(f.record_count for f in (replaced if added is None else added)),
        unchanged=added is None,
        snapshot_id=None,
    )
    if added is not None:
        faults.hit("backfill.before_publish")
        summary = _publish(db, tenant, plan, replaced, added, summary, actor)
    log.warning(
        "table backfilled" if added is not None else "backfill: the table already matches",
        tenant_id=tenant,
        **summary.to_json(),
    )
    return summary


def _publish(
    db: Database,
    tenant: str,
    plan: _Plan,
    replaced: list[ListedFile],
    added: list[layout.DataFile],
    summary: BackfillSummary,
    actor: str,
) -> BackfillSummary:
    removed = [f.file_id for f in replaced]
    done: list[BackfillSummary] = []

    def audit(conn: Conn, snapshot_id: int) -> None:
        done.append(attrs.evolve(summary, snapshot_id=snapshot_id))
        event = MaintenanceCompleted(tenant, "backfill", done[-1].to_json())
        record_maintenance(conn, tenant, event, actor)

    change = SnapshotChange(
        tenant_id=tenant,
        kind="backfill",
        created_by=actor,
        files_added=added,
        files_removed=removed,
        metadata={"actor": actor, "table_id": plan.table.table_id, "source": summary.source},
    )
    snapshots.publish(
        db,
        change,
        plan.head,
        policy=ConflictPolicy.REBASE,
        still_valid=snapshots.files_still_live(tenant, removed),
        after=audit,
    )
    return done[-1]
