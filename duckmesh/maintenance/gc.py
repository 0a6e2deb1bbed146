"""Snapshot expiry and garbage collection of data files.

Retention first publishes a snapshot without the files of tables whose
``retention.max_age_days`` has passed (by the newest event time in the
file). Expiry then marks old snapshots expired: all but the newest ``retain_count`` and
those younger than ``retain_s``, never the latest and never a pinned one
(``SnapshotsExpired``). An expired snapshot can no longer be queried.

GC then deletes data files that no unexpired or pinned snapshot references,
once the snapshot that removed them is older than the safety window, and
records it (``FilesCollected``); and it deletes orphans — objects under the
tenant's prefix that no catalog row knows (a commit or compaction that wrote
files and crashed before publishing) — once older than the window. The
window protects files a running commit has written but not yet published.
Files left in the store's scratch directory (a writer killed mid-file) go
after the same window.

The catalog rows of expired snapshots and collected files are then pruned
(``CatalogPruned``); after a pass over the tenants that pruned any, the
collector vacuums those tables (``vacuum_catalog``), as the bus is vacuumed
after a prune, so the space is reused at once instead of piling up (heap
and index pages) until autovacuum's next turn (ADR 0016).

Last, the tenant's ingest bus is pruned: committed rows older than the
idempotency window are deleted in token ranges (``IngestBus.prune``,
ADR 0016), and the retained records and bytes are exported as gauges.

All are idempotent: a crash after deleting files but before recording it
leaves files the next run finds already gone, and records then.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import TypeVar

import attrs
import structlog

from duckmesh import metrics, unsafe
from duckmesh.bus import IngestBus
from duckmesh.catalog import reads
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.snapshots import publish_removal
from duckmesh.db import Conn, Database
from duckmesh.events import Event, call_retrying
from duckmesh.events.types import (
    CatalogPruned,
    FilesCollected,
    MaintenanceCompleted,
    SnapshotsExpired,
)
from duckmesh.maintenance.keyed_retention import KeyedRetention
from duckmesh.maintenance.results import RetentionSummary
from duckmesh.projections.catalog import PRUNABLE_SNAPSHOTS
from duckmesh.storage.protocol import ObjectStore

log = structlog.get_logger("duckmesh.gc")
MAX_SNAPSHOT_ID = (1 << 63) - 1
SCRATCH_MIN_AGE_S = 300.0
T = TypeVar("T")
# The projection tables ``CatalogPruned`` deletes from.
PRUNED_TABLES = ("data_file", "snapshot", "snapshot_table_watermark", "maintenance_run")
# Expiry never takes a pinned snapshot.
NOT_PINNED = (
    " AND NOT EXISTS (SELECT 1 FROM snapshot_pin p"
    "   WHERE p.tenant_id = s.tenant_id AND p.snapshot_id = s.snapshot_id)"
)


@attrs.frozen
class RetentionSettings:
    retain_count: int = 100
    retain_s: float = 24 * 3600.0
    safety_window_s: float = 3600.0
    idempotency_window_s: float = 7 * 24 * 3600.0
    bus_prune_chunk_tokens: int = 50_000
    maintenance_runs_kept: int = 1000  # newest maintenance_run rows kept per tenant


class Collector:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        settings: RetentionSettings,
        actor: str = "retention",
        bus: IngestBus | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.bus = bus
        self.keyed = KeyedRetention(db, store, actor)
        self.settings = settings
        self.actor = actor
        self.catalog_pruned = False  # a CatalogPruned since the last vacuum_catalog

    def retain(self, tenant: str) -> RetentionSummary:
        """Apply retention, expire, then collect, for one tenant."""
        retired = self._call(lambda conn: self._apply_retention(conn, tenant))
        retired += self.keyed.retain(tenant, dt.datetime.now(dt.UTC))
        expired = self._call(lambda conn: self._expire(conn, tenant))
        collected, orphans = self._collect(tenant)
        if self._call(lambda conn: self._prune_catalog(conn, tenant)):
            self.catalog_pruned = True
        pruned = self._prune_bus(tenant)
        summary = RetentionSummary(retired, expired, collected, orphans, pruned)
        if summary.changed:
            done = MaintenanceCompleted(tenant, "retention", summary.to_json())
            self._call(lambda conn: self._record(conn, tenant, done))
        return summary

    def _prune_catalog(self, conn: Conn, tenant: str) -> bool:
        """Delete the catalog rows of expired snapshots and collected files
        (``CatalogPruned``, so a replay deletes the same rows)."""
        row = conn.execute(
            f"SELECT (SELECT max(snapshot_id) FROM ({PRUNABLE_SNAPSHOTS}) AS gone),"
            " EXISTS (SELECT 1 FROM data_file WHERE tenant_id = %(t)s"
            "   AND collected_at IS NOT NULL),"
            " (SELECT position FROM maintenance_run WHERE tenant_id = %(t)s"
            "   ORDER BY position DESC OFFSET %(keep)s LIMIT 1)",
            {
                "t": tenant,
                "through": MAX_SNAPSHOT_ID,
                "keep": self.settings.maintenance_runs_kept,
            },
        ).fetchone()
        assert row is not None
        through, collected, newest_dropped_run = row
        if through is None and not collected and newest_dropped_run is None:
            return False
        runs_before = 0 if newest_dropped_run is None else int(newest_dropped_run) + 1
        event = CatalogPruned(tenant, int(through or 0), runs_before)
        self._record(conn, tenant, event)
        return True

    def vacuum_catalog(self) -> bool:
        """Vacuum the tables catalog pruning deleted from, once per pass over
        the tenants (not per tenant): plain VACUUM, no lock against readers
        or writers. True when it ran."""
        if not self.catalog_pruned:
            return False
        self.catalog_pruned = False
        tables = ", ".join(PRUNED_TABLES)
        self.db.call(lambda conn: conn.execute(f"VACUUM (ANALYZE) {tables}"), transaction=False)
        return True

    def _prune_bus(self, tenant: str) -> int:
        """Delete the tenant's committed bus rows past the idempotency window."""
        if self.bus is None:
            return 0
        pruned = self.bus.prune(
            tenant,
            window_s=self.settings.idempotency_window_s,
            chunk_tokens=self.settings.bus_prune_chunk_tokens,
        )
        held = self.bus.retained(tenant)
        metrics.BUS_PRUNED.inc(pruned.deleted)
        metrics.BUS_RETAINED_RECORDS.labels(tenant=tenant).set(held.records)
        metrics.BUS_RETAINED_BYTES.labels(tenant=tenant).set(held.bytes)
        if pruned.deleted:
            log.info(
                "bus pruned",
                tenant_id=tenant,
                deleted=pruned.deleted,
                pruned_token=pruned.pruned_token,
                retained=held.records,
            )
        return pruned.deleted

    def _call(self, fn: Callable[[Conn], T]) -> T:
        # A compaction or another collector may append to the tenant's
        # maintenance stream first: then the step runs again.
        return call_retrying(self.db, fn)

    def _record(self, conn: Conn, tenant: str, event: Event) -> None:
        record_maintenance(conn, tenant, event, self.actor)

    def _apply_retention(self, conn: Conn, tenant: str) -> int:
        """Publish a ``retention`` snapshot without the files of tables with
        ``retention.max_age_days`` whose newest event time is past it
        (append-only tables). Files with no event time are kept; older
        snapshots keep listing the files until they expire."""
        # Append-only tables only: keyed tables retire whole keys
        # (``keyed_retention``), since dropping an old file alone could drop a
        # key's newest version and bring an older one back.
        tables = {
            t.table_id: t
            for t in reads.list_tables(conn, tenant)
            if t.retention and not t.primary_key
        }
        head = reads.latest_snapshot(conn, tenant)
        if not tables or head is None:
            return 0
        now = dt.datetime.now(dt.UTC)
        chosen = []
        for f in reads.snapshot_files(conn, tenant, head.snapshot_id):
            table = tables.get(f.table_id)
            if table is None or f.max_event_time is None:
                continue
            days = (table.retention or {})["max_age_days"]
            if f.max_event_time < now - dt.timedelta(days=days):
                chosen.append(f.file_id)
        if chosen:
            publish_removal(conn, tenant, self.actor, "retention", lambda _files: chosen)
        return len(chosen)

    def _expire(self, conn: Conn, tenant: str) -> int:
        unpinned = "" if unsafe.broken("expire_pinned") else NOT_PINNED  # TEST ONLY: pins ignored
        rows = conn.execute(
            "SELECT s.snapshot_id FROM snapshot s"
            " WHERE s.tenant_id = %s AND s.expired_at IS NULL"
            " AND s.snapshot_id < (SELECT max(snapshot_id) FROM snapshot WHERE tenant_id = %s)"
            " AND s.created_at < now() - make_interval(secs => %s)"
            f"{unpinned}"
            " AND s.snapshot_id NOT IN (SELECT snapshot_id FROM snapshot WHERE tenant_id = %s"
            "   ORDER BY snapshot_id DESC LIMIT %s)"
            " ORDER BY s.snapshot_id",
            (tenant, tenant, self.settings.retain_s, tenant, self.settings.retain_count),
        ).fetchall()
        ids = [r[0] for r in rows]
        if ids:
            self._record(conn, tenant, SnapshotsExpired(tenant, ids))
        return len(ids)

    def sweep_scratch(self) -> int:
        """Delete files in the store's scratch directory older than the safety
        window, and never younger than ``SCRATCH_MIN_AGE_S`` (a window of 0
        must not pull a file from under a live writer, whose file is renamed
        away when complete): partial files of a commit, compaction or
        checkpoint killed mid-write. Counted with the orphans."""
        cutoff = time.time() - max(self.settings.safety_window_s, SCRATCH_MIN_AGE_S)
        swept = 0
        try:
            entries = list(os.scandir(self.store.scratch_dir()))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    swept += 1
            except FileNotFoundError:
                continue  # renamed or swept by another process meanwhile
        if swept:
            log.info("scratch files swept", files=swept)
        return swept

    def _collect(self, tenant: str) -> tuple[int, int]:
        window = self.settings.safety_window_s

        # A live snapshot is unexpired or pinned. TEST ONLY: unexpired ones are not.
        retained = "FALSE" if unsafe.broken("gc_live_files") else "s.expired_at IS NULL"

        def unreferenced(conn: Conn) -> tuple[list[tuple[str, str]], set[str], set[str]]:
            # Files removed by a snapshot older than the window that no live
            # (unexpired or pinned) snapshot still lists.
            rows = conn.execute(
                "SELECT f.file_id, f.path FROM data_file f"
                " JOIN snapshot r ON r.tenant_id = f.tenant_id AND r.snapshot_id = f.removed_in"
                " WHERE f.tenant_id = %s AND f.collected_at IS NULL"
                " AND r.created_at < now() - make_interval(secs => %s)"
                " AND NOT EXISTS (SELECT 1 FROM snapshot s"
                "   WHERE s.tenant_id = f.tenant_id AND s.snapshot_id >= f.added_in"
                "   AND s.snapshot_id < f.removed_in"
                f"   AND ({retained} OR EXISTS (SELECT 1 FROM snapshot_pin p"
                "        WHERE p.tenant_id = s.tenant_id AND p.snapshot_id = s.snapshot_id)))",
                (tenant, window),
            ).fetchall()
            known = {
                r[0]
                for r in conn.execute("SELECT path FROM data_file WHERE tenant_id = %s", (tenant,))
            }
            # A snapshot restore lists an object again under a new file id:
            # such a path is still needed by a row that is not collected.
            shared = conn.execute(
                "SELECT DISTINCT path FROM data_file WHERE tenant_id = %s"
                " AND collected_at IS NULL AND path = ANY(%s) AND NOT file_id = ANY(%s)",
                (tenant, [r[1] for r in rows], [r[0] for r in rows]),
            )
            return [(r[0], r[1]) for r in rows], known, {r[0] for r in shared}

        doomed, known, needed = self.db.call(unreferenced, transaction=False)
        for _, path in doomed:
            if path not in needed:
                self.store.delete(path)  # idempotent: a missing file is fine
        if doomed:
            self._call(
                lambda conn: self._record(
                    conn, tenant, FilesCollected(tenant, [file_id for file_id, _ in doomed])
                )
            )
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window)
        orphans = self.sweep_scratch()
        for obj in self.store.list(tenant):
            if obj.key not in known and obj.modified < cutoff:
                orphans += self.store.delete(obj.key)
        metrics.GC_FILES_DELETED.inc(len(doomed) + orphans)
        if doomed or orphans:
            log.info("files collected", tenant_id=tenant, unreferenced=len(doomed), orphans=orphans)
        return len(doomed), orphans
