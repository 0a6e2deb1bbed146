"""Compaction: merge a table's small files into larger ones, same data.

Within one table and one partition directory, small files (under half the
target size) are merged once there are at least ``min_files`` of them.
Keyed tables keep only the newest version per key among the merged files —
tombstones included, because a delete must keep hiding older versions that
live in files outside the merge. Rows keep their tokens and ops, so reads
resolve exactly as before.

The result is published through the same optimistic snapshot stream as the
coordinator: one ``SnapshotPublished`` (kind ``compaction``, watermark
unchanged) adding the merged files and removing their inputs. Older
snapshots still list the old files, so time travel is unaffected. A crash or
a lost race before the publish commit changes nothing visible; the files
written are orphans for GC.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from typing import Any

import attrs
import duckdb
import structlog

from duckmesh import metrics
from duckmesh.catalog import reads
from duckmesh.catalog.commands import notify_snapshot, record_maintenance, snapshots_stream
from duckmesh.catalog.model import DataFile, Snapshot, TableDef
from duckmesh.coordinator.parquet import OP_COLUMN as OP
from duckmesh.coordinator.parquet import TOKEN_COLUMN as TOKEN
from duckmesh.db import Conn, Database
from duckmesh.events import ConcurrencyConflict, append
from duckmesh.events.types import MaintenanceCompleted, SnapshotPublished
from duckmesh.storage.local import LocalObjectStore
from duckmesh.supervisors.faults import FaultPoints

log = structlog.get_logger("duckmesh.compaction")

_ATTEMPTS = 5


@attrs.frozen
class CompactionSettings:
    min_files: int = 8
    target_bytes: int = 128 * 1024 * 1024


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def merge_sql(table: TableDef, present: set[str], paths: Sequence[str], target: str) -> str:
    """One COPY that rewrites ``paths`` as one file with the current schema."""
    columns = ", ".join(
        f"CAST({_ident(c.name) if c.name in present else 'NULL'} AS {c.type}) AS {_ident(c.name)}"
        for c in table.columns
    )
    files = ", ".join(_literal(p) for p in paths)
    query = f"SELECT {columns}, {TOKEN}, {OP} FROM read_parquet([{files}], union_by_name = true)"
    if table.primary_key:
        keys = ", ".join(_ident(k) for k in table.primary_key)
        query += f" QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {TOKEN} DESC) = 1"
    return (
        f"COPY ({query} ORDER BY {TOKEN}) TO {_literal(target)} (FORMAT parquet, COMPRESSION zstd)"
    )


def _groups(
    files: Sequence[DataFile], tables: dict[str, TableDef], settings: CompactionSettings
) -> list[list[DataFile]]:
    """Runs of small files per (table, partition), each at most the target size."""
    small = settings.target_bytes // 2
    by_place: dict[tuple[str, str], list[DataFile]] = {}
    for f in files:
        if f.table_id in tables and f.size_bytes < small:
            by_place.setdefault((f.table_id, os.path.dirname(f.path)), []).append(f)
    groups: list[list[DataFile]] = []
    for place in sorted(by_place):
        current: list[DataFile] = []
        size = 0
        for f in sorted(by_place[place], key=lambda f: f.min_token):
            if current and size + f.size_bytes > settings.target_bytes:
                groups.append(current)
                current, size = [], 0
            current.append(f)
            size += f.size_bytes
        groups.append(current)
    return [g for g in groups if len(g) >= settings.min_files]


class Compactor:
    def __init__(
        self,
        db: Database,
        store: LocalObjectStore,
        faults: FaultPoints,
        settings: CompactionSettings,
        actor: str = "compactor",
    ) -> None:
        self.db = db
        self.store = store
        self.faults = faults
        self.settings = settings
        self.actor = actor

    def compact_tenant(self, tenant: str) -> dict[str, Any]:
        """Merge what is worth merging for one tenant; returns a summary."""

        def load(conn: Conn) -> tuple[Snapshot | None, list[DataFile], dict[str, TableDef]]:
            head = reads.latest_snapshot(conn, tenant)
            if head is None:
                return None, [], {}
            files = reads.snapshot_files(conn, tenant, head.snapshot_id)
            live = [t.table_id for t in reads.list_tables(conn, tenant)]
            return head, files, reads.tables_by_id(conn, tenant, live)

        head, files, tables = self.db.call(load, transaction=False)
        summary: dict[str, Any] = {
            "files_merged": 0,
            "files_written": 0,
            "bytes_rewritten": 0,
            "snapshot_id": None,
        }
        groups = _groups(files, tables, self.settings) if head else []
        if head is None or not groups:
            return summary
        present = self.db.call(
            lambda conn: reads.column_names(
                conn, {(g[0].table_id, max(f.schema_version for f in g)) for g in groups}
            ),
            transaction=False,
        )
        added: list[dict[str, Any]] = []
        removed: list[str] = []
        for seq, group in enumerate(groups, start=1):
            table = tables[group[0].table_id]
            newest = max(f.schema_version for f in group)
            added.append(
                self._merge(
                    tenant,
                    head.snapshot_id + 1,
                    seq,
                    table,
                    present[(table.table_id, newest)],
                    group,
                )
            )
            removed.extend(f.file_id for f in group)
            summary["bytes_rewritten"] += sum(f.size_bytes for f in group)
        self.faults.hit("compaction.after_write")
        summary["files_merged"] = len(removed)
        summary["files_written"] = len(added)
        summary["snapshot_id"] = self._publish(tenant, head, added, removed, summary)
        metrics.COMPACTION_RUNS.labels(
            status="completed" if summary["snapshot_id"] else "abandoned"
        ).inc()
        if summary["snapshot_id"]:
            metrics.COMPACTION_BYTES.inc(summary["bytes_rewritten"])
        return summary

    def _merge(
        self,
        tenant: str,
        snapshot_id: int,
        seq: int,
        table: TableDef,
        present: set[str],
        group: list[DataFile],
    ) -> dict[str, Any]:
        scratch = self.store.scratch_path(".parquet")
        try:
            paths = [str(self.store.local_path(f.path)) for f in group]
            with duckdb.connect() as conn:
                conn.execute("SET threads = 1")
                row = conn.execute(merge_sql(table, present, paths, str(scratch))).fetchone()
            count = int(row[0]) if row else 0
            digest = hashlib.sha256(scratch.read_bytes()).hexdigest()
            partition = os.path.dirname(group[0].path)
            key = f"{partition}/part-{snapshot_id:012d}-c{seq:03d}-{secrets.token_hex(4)}.parquet"
            info = self.store.put_file(scratch, key)
        finally:
            if scratch.exists():
                os.unlink(scratch)
        starts = [f.min_event_time for f in group if f.min_event_time is not None]
        ends = [f.max_event_time for f in group if f.max_event_time is not None]
        return {
            "file_id": secrets.token_hex(8),
            "table_id": table.table_id,
            "path": key,
            "schema_version": table.schema_version,
            "record_count": count,
            "size_bytes": info.size,
            "checksum": digest,
            "min_token": min(f.min_token for f in group),
            "max_token": max(f.max_token for f in group),
            "min_event_time": min(starts).isoformat() if starts else None,
            "max_event_time": max(ends).isoformat() if ends else None,
        }

    def _publish(
        self,
        tenant: str,
        head: Snapshot,
        added: list[dict[str, Any]],
        removed: list[str],
        summary: dict[str, Any],
    ) -> int | None:
        for _ in range(_ATTEMPTS):
            parent = head.snapshot_id
            event = SnapshotPublished(
                tenant_id=tenant,
                snapshot_id=parent + 1,
                kind="compaction",
                created_by=self.actor,
                max_visibility_token=head.max_visibility_token,
                parent_id=parent,
                table_watermarks={},
                files_added=added,
                files_removed=removed,
            )

            def publish(conn: Conn, event: SnapshotPublished = event, parent: int = parent) -> None:
                self.faults.hit("compaction.before_publish")
                append(
                    conn,
                    snapshots_stream(tenant),
                    parent,
                    [event],
                    tenant_id=tenant,
                    metadata={"actor": self.actor},
                )
                done = MaintenanceCompleted(
                    tenant, "compaction", dict(summary, snapshot_id=event.snapshot_id)
                )
                record_maintenance(conn, tenant, done, self.actor)
                notify_snapshot(conn, tenant, event.snapshot_id, event.max_visibility_token)

            try:
                self.db.call(publish)
                log.info(
                    "compaction published",
                    tenant_id=tenant,
                    snapshot_id=event.snapshot_id,
                    files_merged=len(removed),
                    files_written=len(added),
                )
                return event.snapshot_id
            except ConcurrencyConflict:
                # A commit published first. Our inputs are still what we merged
                # unless another compaction removed one: then give up (orphans).
                def reread(conn: Conn) -> tuple[Snapshot | None, set[str]]:
                    latest = reads.latest_snapshot(conn, tenant)
                    live = (
                        {f.file_id for f in reads.snapshot_files(conn, tenant, latest.snapshot_id)}
                        if latest
                        else set()
                    )
                    return latest, live

                latest, live = self.db.call(reread, transaction=False)
                if latest is None or not set(removed) <= live:
                    return None
                head = latest
        return None
