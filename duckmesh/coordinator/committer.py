"""One commit cycle: claim a scope, write Parquet, publish one snapshot.

``Committer.commit_once`` is synchronous and runs in a worker thread. Its
only visible effect is the publish transaction, which in ONE Postgres commit
appends ``SnapshotPublished`` (expected stream version, lease fence), updates
the projections, sets aside quarantined records and acks the bus batch. A
crash anywhere before that commit changes nothing visible: the lease expires,
another claim redoes the batch, and files already written are orphans for GC.

A batch that fails to commit (other than by a lost lease) is bisected in
memory until the records — or the rows of stored batches (ADR 0014) — that
fail on their own are found; those are quarantined and the rest commit in
the same publish. When nothing record-
specific is found (the catalog or the disk fails), the scope is given back
with a growing back-off and the tenant is reported failing (``CommitHealth``):
the actor goes on with the other tenants instead of crashing in a loop.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs
import pyarrow.parquet as pq
import structlog

from duckmesh import metrics, tracing, unsafe
from duckmesh.bus import Batch, BusRecord, IngestBus, LeaseLost, QuarantineEntry, UploadBatch
from duckmesh.catalog import reads, snapshots
from duckmesh.catalog.model import Snapshot, TableDef
from duckmesh.catalog.snapshots import ConflictPolicy, RebaseRefused, SnapshotChange
from duckmesh.coordinator.columnar import UploadRows, build_many
from duckmesh.coordinator.health import CommitHealth
from duckmesh.coordinator.lease import LeaseHeartbeat
from duckmesh.coordinator.parquet import PartitionRows, Rejected, build_tables
from duckmesh.coordinator.puts import BackgroundPuts
from duckmesh.db import Conn, Database
from duckmesh.storage import layout
from duckmesh.storage.layout import DataFile
from duckmesh.storage.protocol import ObjectStore
from duckmesh.supervisors.faults import POISON_MARKER, FaultPoints

log = structlog.get_logger("duckmesh.coordinator")


@attrs.frozen
class CommitOutcome:
    tenant_id: str
    snapshot_id: int | None  # None when the batch was given back
    records: int
    files: int
    quarantined: int
    watermark: int


@attrs.frozen
class CommitSettings:
    batch_max_records: int = 100_000
    batch_max_bytes: int = 64 * 1024 * 1024
    lease_s: float = 10.0
    backoff_s: float = 0.5  # a failing tenant's first back-off; doubles per failure
    backoff_max_s: float = 30.0

    def backoff(self, failures: int) -> float:
        return float(min(self.backoff_s * 2 ** min(failures - 1, 32), self.backoff_max_s))


@attrs.frozen
class BatchPlan:
    """What one batch needs from the catalog, read before building files."""

    head: Snapshot | None
    tables: dict[str, TableDef]
    dropped: set[str]
    records: list[BusRecord]  # the batch's records the catalog has not committed yet
    uploads: list[UploadBatch]  # likewise, its upload batches

    @property
    def watermark(self) -> int:
        return self.head.max_visibility_token if self.head else 0


def _reject_upload(upload: UploadBatch, reason: str) -> list[Rejected]:
    tokens = range(upload.first_token, upload.last_token + 1)
    return [Rejected(t, upload.table_id, reason) for t in tokens]


def _reject_rows(rows: UploadRows, reason: str) -> list[Rejected]:
    return [Rejected(t, rows.upload.table_id, reason) for t in rows.tokens.to_pylist()]


# Builds tried while bisecting one upload batch: a failure of a few rows is
# found in O(k log n) builds; one that every row shares (a cast no row can
# follow) would take O(n), so past this budget what still fails goes whole.
BISECT_BUDGET = 256


def _by_table(records: Sequence[BusRecord]) -> dict[str, list[BusRecord]]:
    by_table: dict[str, list[BusRecord]] = {}
    for rec in records:
        by_table.setdefault(rec.table_id, []).append(rec)
    return by_table


class Committer:
    def __init__(
        self,
        db: Database,
        bus: IngestBus,
        store: ObjectStore,
        faults: FaultPoints,
        settings: CommitSettings,
        consumer_id: str,
        health: CommitHealth | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.faults = faults
        self.settings = settings
        self.consumer_id = consumer_id
        self.health = health or CommitHealth()
        # A commit's lease heartbeat and its puts run on these, started once.
        self.workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="commit")

    def commit_once(self) -> CommitOutcome | None:
        """Commit the next pending batch of any scope; None when there is none.

        A batch that fails is bisected; one that still fails is given back
        with a growing back-off for its tenant, so that one tenant's failure
        neither crashes the actor nor stops the other tenants' commits.
        """
        started = time.perf_counter()
        self.faults.hit("coordinator.before_claim")
        batch = self.bus.claim(
            self.consumer_id,
            limit=self.settings.batch_max_records,
            max_bytes=self.settings.batch_max_bytes,
            lease_s=self.settings.lease_s,
        )
        if batch is None:
            return None
        metrics.COMMIT_PHASE.labels(phase="claim").observe(time.perf_counter() - started)
        try:
            with LeaseHeartbeat(self.bus, batch, self.settings.lease_s, self.workers):
                outcome = self._commit_isolating(batch)
        except LeaseLost:
            metrics.PUBLISH_FAILURES.labels(reason="lease_lost").inc()
            log.warning("lease lost before publish; batch abandoned", tenant_id=batch.scope)
            return CommitOutcome(batch.scope, None, 0, 0, 0, batch.after_token)
        except Exception as exc:
            return self._back_off(batch, exc)
        except BaseException:  # cancelled or exiting: give the batch back at once
            self._nack(batch, "commit interrupted", 0.0)
            raise
        self.health.succeeded(batch.scope)
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_RECORDS.observe(outcome.records)
        return outcome

    def _commit_isolating(self, batch: Batch) -> CommitOutcome:
        """Commit; if that fails for a reason other than a lost lease, find the
        records that make it fail and commit the rest with those quarantined."""
        try:
            return self._commit(batch)
        except LeaseLost:
            raise
        except Exception as exc:
            metrics.PUBLISH_FAILURES.labels(reason="error").inc()
            metrics.BISECTED_COMMITS.inc()
            log.warning(
                "commit failed; bisecting the batch",
                tenant_id=batch.scope,
                records=len(batch.records),
                error=type(exc).__name__,
            )
            poison = self._find_poison(self._plan(batch))
            if not poison:
                raise
            return self._commit(batch, poison)

    def _back_off(self, batch: Batch, exc: Exception) -> CommitOutcome:
        error = type(exc).__name__
        failures = self.health.failed(batch.scope, error)
        delay = self.settings.backoff(failures)
        # The text may quote payload values: it goes to the log, never to an API.
        log.error(
            "commit failed; the tenant backs off",
            tenant_id=batch.scope,
            error=error,
            failures=failures,
            retry_in_s=delay,
            exc_info=exc,
        )
        self._nack(batch, error, delay)
        return CommitOutcome(batch.scope, None, 0, 0, 0, batch.after_token)

    def _nack(self, batch: Batch, reason: str, retry_after_s: float) -> None:
        try:
            self.bus.nack(batch, reason, retry_after_s=retry_after_s)
        except Exception:  # the lease expires anyway
            log.exception("nack failed", tenant_id=batch.scope)

    def _plan(self, batch: Batch) -> BatchPlan:
        tenant = batch.scope
        table_ids = sorted(
            {r.table_id for r in batch.records} | {u.table_id for u in batch.uploads}
        )
        head, tables, dropped = self.db.call(
            lambda conn: reads.commit_plan(conn, tenant, table_ids),
            transaction=False,
            pipeline=True,
        )
        watermark = head.max_visibility_token if head else 0
        # The catalog is the truth: never commit a token twice (ADR 0006).
        records = [r for r in batch.records if r.token > watermark]
        uploads = [u for u in batch.uploads if u.last_token > watermark]
        return BatchPlan(head, tables, dropped, records, uploads)

    def _build(
        self, table: TableDef, records: Sequence[BusRecord]
    ) -> tuple[list[PartitionRows], list[Rejected]]:
        if self.faults.enabled:
            for rec in records:
                if POISON_MARKER in rec.payload:
                    self.faults.hit("coordinator.poison_record")
        return build_tables(table, records)

    def _find_poison(self, plan: BatchPlan) -> list[Rejected]:
        """The records that fail to build or encode on their own, found by
        bisecting each table's records in memory (nothing is published)."""
        poison: list[Rejected] = []
        for table_id, recs in _by_table(plan.records).items():
            table = plan.tables.get(table_id)
            if table is not None and table_id not in plan.dropped:
                poison.extend(self._bisect(table, recs))
        for upload in plan.uploads:
            table = plan.tables.get(upload.table_id)
            if table is not None and upload.table_id not in plan.dropped:
                try:
                    rows = UploadRows.decode(upload)
                except Exception as exc:  # unreadable: no row can be told apart
                    poison.extend(_reject_upload(upload, f"commit failed: {type(exc).__name__}"))
                    continue
                poison.extend(self._bisect_upload(table, rows, [BISECT_BUDGET]))
        return poison

    def _build_uploads(self, table: TableDef, batches: list[UploadRows]) -> list[PartitionRows]:
        if self.faults.enabled and any(rows.contains_text(POISON_MARKER) for rows in batches):
            self.faults.hit("coordinator.poison_record")
        return build_many(table, batches)

    def _bisect_upload(
        self, table: TableDef, rows: UploadRows, budget: list[int]
    ) -> list[Rejected]:
        """The rows of an upload batch that fail to build or encode, found by
        bisection as for records (ADR 0014); ``budget`` bounds the builds."""
        budget[0] -= 1
        try:
            for part in self._build_uploads(table, [rows]):
                pq.write_table(part.arrow, io.BytesIO(), compression="zstd")
            return []
        except Exception as exc:
            if len(rows) == 1 or budget[0] <= 0:
                return _reject_rows(rows, f"commit failed: {type(exc).__name__}")
        mid = len(rows) // 2
        return self._bisect_upload(table, rows.slice(0, mid), budget) + self._bisect_upload(
            table, rows.slice(mid, len(rows) - mid), budget
        )

    def _bisect(self, table: TableDef, records: Sequence[BusRecord]) -> list[Rejected]:
        try:
            partitions, _ = self._build(table, records)
            for rows in partitions:
                pq.write_table(rows.arrow, io.BytesIO(), compression="zstd")
            return []
        except Exception as exc:
            if len(records) == 1:
                reason = f"commit failed: {type(exc).__name__}"
                return [Rejected(records[0].token, table.table_id, reason)]
        mid = len(records) // 2
        return self._bisect(table, records[:mid]) + self._bisect(table, records[mid:])

    def _commit(self, batch: Batch, poison: Sequence[Rejected] = ()) -> CommitOutcome:
        puts = BackgroundPuts(self.store, self.workers)
        try:
            return self._commit_putting(batch, poison, puts)
        finally:
            puts.close()  # the puts are over whatever happened (no thread left behind)

    def _commit_putting(
        self, batch: Batch, poison: Sequence[Rejected], puts: BackgroundPuts
    ) -> CommitOutcome:
        tenant = batch.scope
        t0 = time.perf_counter()
        plan = self._plan(batch)
        t1 = time.perf_counter()
        metrics.COMMIT_PHASE.labels(phase="plan").observe(t1 - t0)
        head, watermark = plan.head, plan.watermark
        rejected = list(poison)
        excluded = {r.token for r in poison}
        good = []
        for rec in plan.records:
            if rec.defect is not None:
                rejected.append(Rejected(rec.token, rec.table_id, rec.defect))
            elif rec.token not in excluded:
                good.append(rec)
        next_id = (head.snapshot_id if head else 0) + 1
        files: list[DataFile] = []
        watermarks: dict[str, int] = {}
        seq = 0
        for table_id, recs in _by_table(good).items():
            if table_id in plan.dropped:
                continue  # the table is gone: its records are acknowledged, not written
            table = plan.tables.get(table_id)
            if table is None:
                rejected.extend(Rejected(r.token, table_id, "table not found") for r in recs)
                continue
            watermarks[table_id] = recs[-1].token
            partitions, bad = self._build(table, recs)
            rejected.extend(bad)
            for rows in partitions:
                seq += 1
                files.append(self._write(tenant, rows, next_id, seq, puts))
        self._write_uploads(
            tenant, plan, excluded, files, watermarks, rejected, (next_id, seq), puts
        )
        puts.start()  # durable while the publish's first round trips run (coordinator/puts.py)
        t2 = time.perf_counter()
        metrics.COMMIT_PHASE.labels(phase="write").observe(t2 - t1)
        self.faults.hit("coordinator.after_parquet_write")
        self.faults.hit("coordinator.before_publish_commit")
        new_watermark = max(batch.last_token, watermark)
        traces = tracing.bounded(t for u in plan.uploads for t in u.trace_ids)
        if unsafe.broken("split_publish") and len(files) > 1:  # TEST ONLY: two transactions
            puts.wait()
            head, files = (
                unsafe.publish_part(self.db, batch, head, files[:1], new_watermark),
                files[1:],
            )
        snapshot_id = self._publish(
            batch, head, files, watermarks, rejected, new_watermark, traces, puts
        )
        metrics.COMMIT_PHASE.labels(phase="publish").observe(time.perf_counter() - t2)
        self.faults.hit("coordinator.after_publish_commit")
        self._observe_visibility(good, plan.uploads)
        if rejected:
            metrics.QUARANTINED.inc(len(rejected))
            log.warning(
                "records quarantined",
                tenant_id=tenant,
                count=len(rejected),
                first_reason=rejected[0].reason,
            )
        size = len(plan.records) + sum(u.rows for u in plan.uploads)
        log.info(
            "committed", tenant_id=tenant, snapshot_id=snapshot_id, rows=size, trace_ids=traces
        )
        return CommitOutcome(tenant, snapshot_id, size, len(files), len(rejected), new_watermark)

    def _write_uploads(
        self,
        tenant: str,
        plan: BatchPlan,
        excluded: set[int],
        files: list[DataFile],
        watermarks: dict[str, int],
        rejected: list[Rejected],
        numbering: tuple[int, int],
        puts: BackgroundPuts,
    ) -> None:
        """Write the plan's upload batches (Arrow to Parquet, no JSON between),
        one file per (table, partition) however many batches the plan holds;
        ``numbering``: the snapshot id and the last file sequence number used."""
        snapshot_id, seq = numbering
        by_table: dict[str, list[UploadRows]] = {}
        for upload in plan.uploads:
            if upload.table_id in plan.dropped:
                continue
            if upload.table_id not in plan.tables:
                rejected.extend(_reject_upload(upload, "table not found"))
                continue
            prior = watermarks.get(upload.table_id, 0)
            watermarks[upload.table_id] = max(prior, upload.last_token)
            # Rows found to fail on their own are quarantined, the rest written.
            by_table.setdefault(upload.table_id, []).append(
                UploadRows.decode(upload).without(excluded)
            )
        for table_id, batches in by_table.items():
            for rows in self._build_uploads(plan.tables[table_id], batches):
                seq += 1
                files.append(self._write(tenant, rows, snapshot_id, seq, puts))

    def _write(
        self, tenant: str, rows: PartitionRows, snapshot_id: int, seq: int, puts: BackgroundPuts
    ) -> DataFile:
        """Build one file in scratch; ``puts`` puts it at its key."""
        scratch = self.store.scratch_path(".parquet")
        try:
            size, checksum = layout.write_parquet(rows.arrow, scratch)
            # A full object store: the put would fail with ENOSPC (test builds only).
            self.faults.hit("coordinator.store_put")
        except BaseException:
            if scratch.exists():
                os.unlink(scratch)
            raise
        key = layout.object_key(tenant, rows.table.table_id, rows.partition, snapshot_id, seq)
        puts.add(scratch, key, checksum)
        return rows.data_file(key, size, checksum)

    def _publish(
        self,
        batch: Batch,
        head: Snapshot | None,
        files: list[DataFile],
        watermarks: dict[str, int],
        rejected: Sequence[Rejected],
        new_watermark: int,
        trace_ids: list[str],
        puts: BackgroundPuts,
    ) -> int:
        """Publish with the REBASE policy: when compaction or a restore
        published first and the watermark is unchanged, our files are still
        exactly what is missing. Otherwise the batch is redone (``LeaseLost``)."""
        tenant = batch.scope
        entries = [QuarantineEntry(r.token, r.table_id, r.reason) for r in rejected]
        tables = {f.table_id for f in files}

        def ack(conn: Conn, _snapshot_id: int) -> None:
            # The ack takes the scope row lock first: a stale holder fails here.
            self.bus.ack(batch, tx=conn)

        def set_aside(conn: Conn, _snapshot_id: int) -> None:
            self.bus.quarantine(batch, entries, tx=conn)
            puts.wait()  # the last step before COMMIT: every file durable first
            self.faults.hit("coordinator.inside_publish_commit")

        def still_valid(conn: Conn, latest: Snapshot | None) -> bool:
            metrics.CLAIM_RETRIES.inc()
            if latest is None or latest.max_visibility_token != batch.after_token:
                return unsafe.broken("no_fencing")  # TEST ONLY: a stale batch publishes
            # A table dropped meanwhile: redo the batch without it.
            return not reads.dropped_table_ids(conn, tenant) & tables

        change = SnapshotChange(
            tenant_id=tenant,
            kind="commit",
            created_by=self.consumer_id,
            files_added=files,
            table_watermarks=watermarks,
            max_visibility_token=new_watermark,
            fence=batch.fence,
            # The ingest requests' trace ids (bounded): a query can name them.
            metadata={"actor": self.consumer_id, **({"trace_ids": trace_ids} if trace_ids else {})},
        )
        try:
            published = snapshots.publish(
                self.db,
                change,
                head,
                policy=ConflictPolicy.REBASE,
                still_valid=still_valid,
                before=ack,
                after=set_aside,
                pipeline=True,
            )
        except RebaseRefused:
            raise LeaseLost(batch.scope, batch.fence) from None
        return published.snapshot_id

    @staticmethod
    def _observe_visibility(
        records: Sequence[BusRecord], uploads: Sequence[UploadBatch] = ()
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        step = max(1, len(records) // 50)
        # One sample per upload batch: its rows share one ingest time.
        for when in [r.ingested_at for r in records[::step]] + [u.ingested_at for u in uploads]:
            metrics.WRITE_TO_VISIBLE.observe((now - when).total_seconds())
