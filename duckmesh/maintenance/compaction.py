"""Compaction: merge a table's small files into larger ones, same data.

Within one table and one partition directory, small files (under half the
target size) are merged once there are at least ``min_files`` of them.
Keyed tables keep only the newest version per key among the merged files —
tombstones included, because a delete must keep hiding older versions that
live in files outside the merge. Rows keep their tokens and ops, so reads
resolve exactly as before.

The result is published through ``duckmesh.catalog.snapshots`` like a
commit: one snapshot (kind ``compaction``, watermark unchanged) adding the
merged files and removing their inputs, rebased over commits that land
meanwhile. Older
snapshots still list the old files, so time travel is unaffected. A crash or
a lost race before the publish commit changes nothing visible; the files
written are orphans for GC. A damaged input (missing, of the wrong size, or
unreadable by DuckDB) skips its group with an error log line and a metric
instead of failing the pass: the compactor keeps serving every other table
(``duckmesh repair`` and the integrity actor deal with the damage).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import duckdb
import structlog

from duckmesh import metrics
from duckmesh.catalog import reads, snapshots
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.model import DataFile, Snapshot, TableDef
from duckmesh.catalog.snapshots import ConflictPolicy, RebaseRefused, SnapshotChange
from duckmesh.db import Conn, Database
from duckmesh.events.types import MaintenanceCompleted
from duckmesh.maintenance.results import CompactionSummary
from duckmesh.storage import layout
from duckmesh.storage.protocol import ObjectStore
from duckmesh.supervisors.faults import FaultPoints

log = structlog.get_logger("duckmesh.compaction")


@attrs.frozen
class CompactionSettings:
    min_files: int = 8
    target_bytes: int = 128 * 1024 * 1024
    # DuckDB's default is 80% of RAM: a merge sorting 128 MiB of zstd Parquet
    # held ~800 MiB, the server's peak while bulk loading (ADR 0014). Bounded,
    # the sort spills to the scratch directory instead.
    memory_mb: int = 128


def merge_sql(table: TableDef, present: set[str], paths: Sequence[str], target: str) -> str:
    """One COPY that rewrites ``paths`` as one file with the current schema."""
    columns = [(c.name, c.type) for c in table.columns]
    return layout.merge_sql(columns, table.primary_key, paths, present, target)


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


class DamagedInput(Exception):
    """An input file of a merge is missing, truncated or unreadable."""

    def __init__(self, file: DataFile, reason: str) -> None:
        super().__init__(f"{file.path}: {reason}")
        self.file = file
        self.reason = reason


class Compactor:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        faults: FaultPoints,
        settings: CompactionSettings,
        actor: str = "compactor",
    ) -> None:
        self.db = db
        self.store = store
        self.faults = faults
        self.settings = settings
        self.actor = actor

    def compact(self, tenant: str) -> CompactionSummary:
        """Merge what is worth merging for one tenant; returns a summary."""

        def load(conn: Conn) -> tuple[Snapshot | None, list[DataFile], dict[str, TableDef]]:
            head = reads.latest_snapshot(conn, tenant)
            if head is None:
                return None, [], {}
            files = reads.snapshot_files(conn, tenant, head.snapshot_id)
            live = [t.table_id for t in reads.list_tables(conn, tenant)]
            return head, files, reads.tables_by_id(conn, tenant, live)

        head, files, tables = self.db.call(load, transaction=False)
        groups = _groups(files, tables, self.settings) if head else []
        if head is None or not groups:
            return CompactionSummary()
        present = self.db.call(
            lambda conn: reads.column_names(
                conn, {(g[0].table_id, max(f.schema_version for f in g)) for g in groups}
            ),
            transaction=False,
        )
        added: list[layout.DataFile] = []
        merged: list[list[DataFile]] = []
        for seq, group in enumerate(groups, start=1):
            table = tables[group[0].table_id]
            newest = max(f.schema_version for f in group)
            columns = present[(table.table_id, newest)]
            try:
                added.append(self._merge(head.snapshot_id + 1, seq, table, columns, group))
            except DamagedInput as exc:
                self._report_damage(tenant, table, exc)
                continue  # the other groups, tables and tenants still compact
            merged.append(group)
        groups = merged
        if not groups:
            return CompactionSummary()
        self.faults.hit("compaction.after_write")
        summary = CompactionSummary(
            files_merged=sum(len(g) for g in groups),
            files_written=len(added),
            bytes_rewritten=sum(f.size_bytes for g in groups for f in g),
        )
        removed = [f.file_id for g in groups for f in g]
        summary = attrs.evolve(
            summary, snapshot_id=self._publish(tenant, head, added, removed, summary)
        )
        metrics.COMPACTION_RUNS.labels(
            status="completed" if summary.snapshot_id else "abandoned"
        ).inc()
        if summary.snapshot_id:
            metrics.COMPACTION_BYTES.inc(summary.bytes_rewritten)
        return summary

    @staticmethod
    def _run_merge(sql: str, scratch: Path, memory_mb: int | None) -> int:
        with duckdb.connect() as conn:
            conn.execute("SET threads = 1")
            if memory_mb is not None:
                conn.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
                conn.execute(f"SET temp_directory = {layout.quote_literal(str(scratch.parent))}")
            row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def _merge(
        self,
        snapshot_id: int,
        seq: int,
        table: TableDef,
        present: set[str],
        group: list[DataFile],
    ) -> layout.DataFile:
        self._check_sizes(group)
        scratch = self.store.scratch_path(".parquet")
        try:
            paths = [str(p) for p in self.store.local_paths([f.path for f in group])]
            sql = merge_sql(table, present, paths, str(scratch))
            try:
                count = self._run_merge(sql, scratch, self.settings.memory_mb)
            except duckdb.OutOfMemoryException:
                # Some of a merge cannot spill (a Parquet row group of wide rows
                # is buffered whole): bounded memory must not stop compaction.
                log.warning(
                    "compaction merge needs more than its memory bound; retried without it",
                    table_id=table.table_id,
                    memory_mb=self.settings.memory_mb,
                )
                count = self._run_merge(sql, scratch, None)
            except duckdb.Error as exc:
                with duckdb.connect() as conn:
                    self._find_unreadable(conn, group, exc)
                raise
            digest = layout.sha256_file(scratch)
            key = layout.compacted_key(layout.partition_dir(group[0].path), snapshot_id, seq)
            info = self.store.put_file(scratch, key, digest)
        finally:
            if scratch.exists():
                os.unlink(scratch)
        starts = [f.min_event_time for f in group if f.min_event_time is not None]
        ends = [f.max_event_time for f in group if f.max_event_time is not None]
        return layout.DataFile(
            file_id=layout.new_file_id(),
            table_id=table.table_id,
            path=key,
            schema_version=table.schema_version,
            record_count=count,
            size_bytes=info.size,
            checksum=digest,
            min_token=min(f.min_token for f in group),
            max_token=max(f.max_token for f in group),
            min_event_time=min(starts) if starts else None,
            max_event_time=max(ends) if ends else None,
        )

    def _check_sizes(self, group: list[DataFile]) -> None:
        """A missing or truncated input is found by its size, before any read."""
        for f in group:
            info = self.store.stat(f.path)
            if info is None:
                raise DamagedInput(f, "missing")
            if info.size != f.size_bytes:
                raise DamagedInput(f, f"size {info.size}, recorded {f.size_bytes}")

    def _find_unreadable(
        self, conn: duckdb.DuckDBPyConnection, group: list[DataFile], exc: duckdb.Error
    ) -> None:
        """After a failed merge: the input DuckDB cannot read alone, if any."""
        for f in group:
            try:
                conn.execute(
                    "SELECT count(*) FROM read_parquet(?)", [str(self.store.local_path(f.path))]
                )
            except duckdb.Error as alone:
                raise DamagedInput(f, str(alone).splitlines()[0]) from exc

    def _report_damage(self, tenant: str, table: TableDef, exc: DamagedInput) -> None:
        metrics.COMPACTION_DAMAGED_FILES.inc()
        log.error(
            "damaged data file skipped by compaction",
            tenant_id=tenant,
            table=table.name,
            path=exc.file.path,
            reason=exc.reason,
            error_code="DATA_FILE_DAMAGED",
        )

    def _publish(
        self,
        tenant: str,
        head: Snapshot,
        added: list[layout.DataFile],
        removed: list[str],
        summary: CompactionSummary,
    ) -> int | None:
        """Publish with the REBASE policy: a commit that published first does
        not matter unless another compaction removed one of our inputs; then
        give up (the merged files are orphans for GC)."""

        def before(conn: Conn, _snapshot_id: int) -> None:
            self.faults.hit("compaction.before_publish")

        def record(conn: Conn, snapshot_id: int) -> None:
            done = attrs.evolve(summary, snapshot_id=snapshot_id).to_json()
            record_maintenance(
                conn, tenant, MaintenanceCompleted(tenant, "compaction", done), self.actor
            )

        change = SnapshotChange(
            tenant_id=tenant,
            kind="compaction",
            created_by=self.actor,
            files_added=added,
            files_removed=removed,
            metadata={"actor": self.actor},
        )
        try:
            published = snapshots.publish(
                self.db,
                change,
                head,
                policy=ConflictPolicy.REBASE,
                still_valid=snapshots.files_still_live(tenant, removed),
                before=before,
                after=record,
            )
        except RebaseRefused:
            return None
        log.info(
            "compaction published",
            tenant_id=tenant,
            snapshot_id=published.snapshot_id,
            files_merged=len(removed),
            files_written=len(added),
        )
        return published.snapshot_id
