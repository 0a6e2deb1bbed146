"""``duckmesh repair TABLE``: make a table with a damaged data file answer again.

Why it exists: a data file of the latest snapshot that is missing, truncated
or altered makes every query of its table fail, and nothing published a
snapshot without it short of dropping the whole table. What it does, for one
table of one tenant:

1. checks every file of the table in the latest snapshot (exists, recorded
   size, recorded SHA-256; and that DuckDB can read it);
2. with ``--from-backup DIR``: a damaged file whose copy at ``DIR/<key>``
   has the recorded SHA-256 is put back in place (no catalog change: files
   are immutable and content-addressed by their checksum);
3. the files still damaged are removed from the table by one new snapshot
   (kind ``repair``, watermark unchanged), published through the one
   publisher (duckmesh.catalog.snapshots, ADR 0010) in the same transaction
   as a ``MaintenanceCompleted`` event of kind ``repair`` that records what
   was restored, what was removed and how many rows went with it.

The rows of a removed file are lost from "latest" (older snapshots still
list the file, so they fail the same way until they expire); re-ingest them
from the source (docs/OPERATIONS.md, runbook "A damaged data file").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import attrs
import duckdb
import structlog

from duckmesh.catalog import reads, snapshots
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.model import DataFile
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from duckmesh.events import call_retrying
from duckmesh.events.types import MaintenanceCompleted
from duckmesh.storage.layout import sha256_file
from duckmesh.storage.protocol import ObjectStore

log = structlog.get_logger("duckmesh.repair")


@attrs.frozen
class RepairSummary:
    table: str
    files_checked: int
    damaged: dict[str, str]  # object key -> what is wrong with it
    restored: list[str]  # put back from the backup copy
    removed: list[str]  # dropped from the table by the repair snapshot
    records_removed: int
    snapshot_id: int | None  # the repair snapshot; None when nothing was removed

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def damage(store: ObjectStore, f: DataFile) -> str | None:
    """What is wrong with a data file, or None when it is whole and readable."""
    info = store.stat(f.path)
    if info is None:
        return "missing"
    if info.size != f.size_bytes:
        return f"size {info.size}, recorded {f.size_bytes}"
    path = store.local_path(f.path)
    if sha256_file(path) != f.checksum:
        return "checksum differs from the recorded SHA-256"
    try:
        with duckdb.connect() as conn:
            conn.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()
    except duckdb.Error as exc:
        return f"unreadable: {str(exc).splitlines()[0]}"
    return None


def _table_files(db: Database, tenant: str, table: str) -> tuple[str, list[DataFile]]:
    def load(conn: Conn) -> tuple[str, list[DataFile]]:
        tdef = reads.get_table(conn, tenant, table)
        if tdef is None:
            raise DuckMeshError("TABLE_NOT_FOUND", f"no table {table!r} in tenant {tenant!r}")
        head = reads.latest_snapshot(conn, tenant)
        files = reads.snapshot_files(conn, tenant, head.snapshot_id) if head else []
        return tdef.table_id, [f for f in files if f.table_id == tdef.table_id]

    return db.call(load, transaction=False)


def _restore(store: ObjectStore, f: DataFile, backup_dir: Path) -> bool:
    """Put the backup copy of ``f`` in place when it has the recorded checksum."""
    copy = backup_dir / f.path
    if not copy.is_file() or sha256_file(copy) != f.checksum:
        return False
    scratch = store.scratch_path(".parquet")
    shutil.copyfile(copy, scratch)
    # Names are never reused for other content; this is the same content the
    # catalog recorded (checksum checked), so the damaged object makes way.
    store.delete(f.path)
    store.put_file(scratch, f.path, f.checksum)
    return damage(store, f) is None


def repair_table(
    db: Database,
    store: ObjectStore,
    tenant: str,
    table: str,
    *,
    backup_dir: Path | None = None,
    actor: str = "repair",
) -> RepairSummary:
    """Check ``table``'s files; restore or remove the damaged ones (see module doc)."""
    table_id, files = _table_files(db, tenant, table)
    damaged = {f.path: reason for f in files if (reason := damage(store, f)) is not None}
    broken = [f for f in files if f.path in damaged]
    restored = [f.path for f in broken if backup_dir is not None and _restore(store, f, backup_dir)]
    gone = [f for f in broken if f.path not in restored]
    summary = RepairSummary(
        table=table,
        files_checked=len(files),
        damaged=damaged,
        restored=restored,
        removed=sorted(f.path for f in gone),
        records_removed=sum(f.record_count for f in gone),
        snapshot_id=None,
    )
    gone_ids = {f.file_id for f in gone}

    def publish(conn: Conn) -> RepairSummary:
        done = summary
        if gone_ids:
            snapshot_id = snapshots.publish_removal(
                conn,
                tenant,
                actor,
                "repair",
                lambda live: [f.file_id for f in live if f.file_id in gone_ids],
                metadata={"actor": actor, "table_id": table_id},
            )
            done = attrs.evolve(summary, snapshot_id=snapshot_id)
        event = MaintenanceCompleted(tenant, "repair", done.to_json())
        record_maintenance(conn, tenant, event, actor)
        return done

    result = call_retrying(db, publish)
    log.warning(
        "table repaired" if damaged else "table checked: nothing to repair",
        tenant_id=tenant,
        table=table,
        damaged=len(damaged),
        restored=len(restored),
        removed=len(gone),
        records_removed=result.records_removed,
        snapshot_id=result.snapshot_id,
    )
    return result
