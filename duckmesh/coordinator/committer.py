"""One commit cycle: claim a scope, write Parquet, publish one snapshot.

``Committer.commit_once`` is synchronous and runs in a worker thread. Its
only visible effect is the publish transaction, which in ONE Postgres commit
appends ``SnapshotPublished`` (expected stream version, lease fence), updates
the projections, sets aside quarantined records and acks the bus batch. A
crash anywhere before that commit changes nothing visible: the lease expires,
another claim redoes the batch, and files already written are orphans for GC.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import structlog

from duckmesh import metrics
from duckmesh.bus import Batch, BusRecord, IngestBus, LeaseLost
from duckmesh.catalog import reads
from duckmesh.catalog.commands import notify_snapshot, snapshots_stream
from duckmesh.catalog.model import Snapshot
from duckmesh.coordinator.parquet import PartitionRows, Rejected, build_tables, write_parquet
from duckmesh.db import Conn, Database
from duckmesh.events import ConcurrencyConflict, append
from duckmesh.events.types import SnapshotPublished
from duckmesh.storage.local import LocalObjectStore
from duckmesh.supervisors.faults import FaultPoints

log = structlog.get_logger("duckmesh.coordinator")

_PUBLISH_ATTEMPTS = 5


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


def object_key(tenant_id: str, rows: PartitionRows, snapshot_id: int, seq: int) -> str:
    return (
        f"{tenant_id}/{rows.table.table_id}/{rows.partition}/"
        f"part-{snapshot_id:012d}-{seq:04d}-{secrets.token_hex(4)}.parquet"
    )


class LeaseHeartbeat:
    """Renews a batch's lease every third of its length while a commit runs,
    so a slow commit (a big batch, a slow disk) is not taken over half-way.
    A lost lease is only noted: fencing makes the publish fail anyway."""

    def __init__(self, bus: IngestBus, batch: Batch, lease_s: float) -> None:
        self.bus = bus
        self.batch = batch
        self.lease_s = lease_s
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.bus.extend_lease(self.batch, self.lease_s)
                self.renewals += 1
            except LeaseLost:
                log.warning("lease lost during a commit", tenant_id=self.batch.scope)
                return
            except Exception:  # the database hiccuped: try again next beat
                log.exception("lease renewal failed", tenant_id=self.batch.scope)


class Committer:
    def __init__(
        self,
        db: Database,
        bus: IngestBus,
        store: LocalObjectStore,
        faults: FaultPoints,
        settings: CommitSettings,
        consumer_id: str,
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.faults = faults
        self.settings = settings
        self.consumer_id = consumer_id

    def commit_once(self) -> CommitOutcome | None:
        """Commit the next pending batch of any scope; None when there is none."""
        started = time.perf_counter()
        batch = self.bus.claim(
            self.consumer_id,
            limit=self.settings.batch_max_records,
            max_bytes=self.settings.batch_max_bytes,
            lease_s=self.settings.lease_s,
        )
        if batch is None:
            return None
        try:
            with LeaseHeartbeat(self.bus, batch, self.settings.lease_s):
                outcome = self._commit(batch)
        except LeaseLost:
            metrics.PUBLISH_FAILURES.labels(reason="lease_lost").inc()
            log.warning("lease lost before publish; batch abandoned", tenant_id=batch.scope)
            return CommitOutcome(batch.scope, None, 0, 0, 0, batch.after_token)
        except BaseException:
            metrics.PUBLISH_FAILURES.labels(reason="error").inc()
            try:
                self.bus.nack(batch, "commit failed")
            except Exception:  # the lease expires anyway
                log.exception("nack failed", tenant_id=batch.scope)
            raise
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_RECORDS.observe(outcome.records)
        return outcome

    def _commit(self, batch: Batch) -> CommitOutcome:
        tenant = batch.scope
        table_ids = sorted({r.table_id for r in batch.records})
        head, tables, dropped = self.db.call(
            lambda conn: (
                reads.latest_snapshot(conn, tenant),
                reads.tables_by_id(conn, tenant, table_ids),
                reads.dropped_table_ids(conn, tenant),
            ),
            transaction=False,
        )
        watermark = head.max_visibility_token if head else 0
        # The catalog is the truth: never commit a token twice (ADR 0006).
        records = [r for r in batch.records if r.token > watermark]
        by_table: dict[str, list[BusRecord]] = {}
        for rec in records:
            by_table.setdefault(rec.table_id, []).append(rec)
        next_id = (head.snapshot_id if head else 0) + 1
        files: list[dict[str, Any]] = []
        rejected: list[Rejected] = []
        watermarks: dict[str, int] = {}
        seq = 0
        for table_id, recs in by_table.items():
            if table_id in dropped:
                continue  # the table is gone: its records are acknowledged, not written
            table = tables.get(table_id)
            if table is None:
                rejected.extend(Rejected(r.token, table_id, "table not found") for r in recs)
                continue
            watermarks[table_id] = recs[-1].token
            partitions, bad = build_tables(table, recs)
            rejected.extend(bad)
            for rows in partitions:
                seq += 1
                files.append(self._write(tenant, rows, next_id, seq))
        self.faults.hit("coordinator.after_parquet_write")
        self.faults.hit("coordinator.before_publish_commit")
        new_watermark = max(batch.last_token, watermark)
        snapshot_id = self._publish(batch, head, files, watermarks, rejected, new_watermark)
        self.faults.hit("coordinator.after_publish_commit")
        self._observe_visibility(records)
        if rejected:
            metrics.QUARANTINED.inc(len(rejected))
            log.warning(
                "records quarantined",
                tenant_id=tenant,
                count=len(rejected),
                first_reason=rejected[0].reason,
            )
        return CommitOutcome(
            tenant, snapshot_id, len(records), len(files), len(rejected), new_watermark
        )

    def _write(
        self, tenant: str, rows: PartitionRows, snapshot_id: int, seq: int
    ) -> dict[str, Any]:
        scratch = self.store.scratch_path(".parquet")
        try:
            size, checksum = write_parquet(rows.arrow, scratch)
            key = object_key(tenant, rows, snapshot_id, seq)
            self.store.put_file(scratch, key)
        finally:
            if scratch.exists():
                os.unlink(scratch)
        return {
            "file_id": secrets.token_hex(8),
            "table_id": rows.table.table_id,
            "path": key,
            "schema_version": rows.table.schema_version,
            "record_count": rows.arrow.num_rows,
            "size_bytes": size,
            "checksum": checksum,
            "min_token": rows.min_token,
            "max_token": rows.max_token,
            "min_event_time": rows.min_event_time.isoformat() if rows.min_event_time else None,
            "max_event_time": rows.max_event_time.isoformat() if rows.max_event_time else None,
        }

    def _publish(
        self,
        batch: Batch,
        head: Snapshot | None,
        files: list[dict[str, Any]],
        watermarks: dict[str, int],
        rejected: Sequence[Rejected],
        new_watermark: int,
    ) -> int:
        tenant = batch.scope
        stream = snapshots_stream(tenant)
        parent = head.snapshot_id if head else 0
        for _attempt in range(_PUBLISH_ATTEMPTS):
            event = SnapshotPublished(
                tenant_id=tenant,
                snapshot_id=parent + 1,
                kind="commit",
                created_by=self.consumer_id,
                max_visibility_token=new_watermark,
                parent_id=parent or None,
                table_watermarks=watermarks,
                files_added=files,
                files_removed=[],
                fence=batch.fence,
            )

            def publish(conn: Conn, event: SnapshotPublished = event, parent: int = parent) -> None:
                # The ack takes the scope row lock first: a stale holder fails here.
                self.bus.ack(batch, tx=conn)
                append(
                    conn,
                    stream,
                    parent,
                    [event],
                    tenant_id=tenant,
                    metadata={"actor": self.consumer_id},
                )
                if rejected:
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO bus_quarantine (tenant_id, token, table_id, reason)"
                            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            [(tenant, r.token, r.table_id, r.reason) for r in rejected],
                        )
                notify_snapshot(conn, tenant, event.snapshot_id, new_watermark)
                self.faults.hit("coordinator.inside_publish_commit")

            try:
                self.db.call(publish)
                return event.snapshot_id
            except ConcurrencyConflict:
                # Compaction or a restore published first. If the watermark is
                # unchanged our files are still exactly what is missing: rebase.
                metrics.CLAIM_RETRIES.inc()
                latest, dropped = self.db.call(
                    lambda c: (
                        reads.latest_snapshot(c, tenant),
                        reads.dropped_table_ids(c, tenant),
                    ),
                    transaction=False,
                )
                if latest is None or latest.max_visibility_token != batch.after_token:
                    raise LeaseLost(batch.scope, batch.fence) from None
                if dropped & {f["table_id"] for f in files}:
                    # A table was dropped meanwhile: redo the batch without it.
                    raise LeaseLost(batch.scope, batch.fence) from None
                parent = latest.snapshot_id
        raise LeaseLost(batch.scope, batch.fence)

    @staticmethod
    def _observe_visibility(records: Sequence[BusRecord]) -> None:
        if not records:
            return
        now = dt.datetime.now(dt.UTC)
        step = max(1, len(records) // 50)
        for rec in records[::step]:
            metrics.WRITE_TO_VISIBLE.observe((now - rec.ingested_at).total_seconds())
