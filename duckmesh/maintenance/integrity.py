"""The integrity checker: every file a live snapshot needs is there, whole.

For one tenant it verifies each data file listed by the latest snapshot and
by every pinned snapshot: the object exists, has the recorded size and (when
asked) the recorded SHA-256 (the one the store recorded at write when it
keeps one, so S3 needs no download; else hashed from the local copy). It
records the result (``MaintenanceCompleted`` kind ``integrity``) and reports
problems; the API turns a failed check into ``INTEGRITY_CHECK_FAILED``.
Read-only on the data, so always safe to rerun.

Besides ``POST /v1/integrity/run`` (on demand), the maintenance process runs
it on a schedule (``IntegrityActor``, duckmesh.maintenance.actors) every
``DUCKMESH_INTEGRITY_INTERVAL_MS``, reading at most
``DUCKMESH_INTEGRITY_BYTES_PER_S`` (a ``Pacer``), so a damaged file is
reported (log line, metrics, the ``DuckMeshIntegrityCheckFailed`` alert)
without anyone asking.
"""

from __future__ import annotations

import threading
import time

import structlog

from duckmesh import metrics
from duckmesh.catalog import reads
from duckmesh.catalog.commands import record_maintenance
from duckmesh.catalog.model import DataFile
from duckmesh.db import Conn, Database
from duckmesh.events import call_retrying
from duckmesh.events.types import MaintenanceCompleted
from duckmesh.maintenance.results import IntegrityReport
from duckmesh.storage.layout import sha256_file
from duckmesh.storage.protocol import ObjectStore

log = structlog.get_logger("duckmesh.integrity")


class CheckStopped(Exception):
    """A paced check was asked to stop (its actor is stopping); nothing recorded."""


class Pacer:
    """Keeps a check's reads at or under ``bytes_per_s`` on average, sleeping
    between files; the sleep ends early (``CheckStopped``) once ``stop`` is set."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self.stop = threading.Event()
        self._started = time.monotonic()
        self._bytes = 0

    def start(self) -> None:
        self._started = time.monotonic()
        self._bytes = 0

    def account(self, nbytes: int) -> None:
        self._bytes += nbytes
        ahead = self._bytes / self.bytes_per_s - (time.monotonic() - self._started)
        if self.stop.wait(max(0.0, ahead)) or self.stop.is_set():
            raise CheckStopped


class IntegrityChecker:
    def __init__(self, db: Database, store: ObjectStore, pacer: Pacer | None = None) -> None:
        self.db = db
        self.store = store
        self.pacer = pacer  # the scheduled check reads at a bounded rate

    def verify(self, tenant: str, *, checksums: bool = True) -> IntegrityReport:
        def load(conn: Conn) -> tuple[list[int], dict[str, DataFile]]:
            head = reads.latest_snapshot(conn, tenant)
            pinned = [
                r[0]
                for r in conn.execute(
                    "SELECT snapshot_id FROM snapshot_pin WHERE tenant_id = %s", (tenant,)
                )
            ]
            ids = sorted({*pinned, *([head.snapshot_id] if head else [])})
            files = {f.file_id: f for s in ids for f in reads.snapshot_files(conn, tenant, s)}
            return ids, files

        snapshot_ids, files = self.db.call(load, transaction=False)
        missing: list[str] = []
        wrong_size: list[str] = []
        wrong_checksum: list[str] = []
        if self.pacer is not None:
            self.pacer.start()
        for f in files.values():
            info = self.store.stat(f.path)
            if info is None:
                missing.append(f.path)
            elif info.size != f.size_bytes:
                wrong_size.append(f.path)
            elif checksums:
                if self._checksum(f.path) != f.checksum:
                    wrong_checksum.append(f.path)
                if self.pacer is not None:
                    self.pacer.account(info.size)
        metrics.INTEGRITY_FILES_CHECKED.inc(len(files))
        metrics.INTEGRITY_MISSING.inc(len(missing))
        metrics.INTEGRITY_SIZE_MISMATCH.inc(len(wrong_size) + len(wrong_checksum))
        report = IntegrityReport(
            snapshots_checked=snapshot_ids,
            files_checked=len(files),
            missing=sorted(missing),
            size_mismatch=sorted(wrong_size),
            checksum_mismatch=sorted(wrong_checksum),
        )
        metrics.INTEGRITY_RUNS.labels(status="ok" if report.ok else "failed").inc()
        self._record(tenant, report)
        if not report.ok:
            log.error(
                "integrity check failed",
                tenant_id=tenant,
                missing=len(missing),
                size_mismatch=len(wrong_size),
                checksum_mismatch=len(wrong_checksum),
                error_code="INTEGRITY_CHECK_FAILED",
            )
        return report

    def _checksum(self, key: str) -> str:
        """The SHA-256 the store recorded at write (no download), else the
        file's own, hashed from its local copy."""
        recorded = self.store.checksum(key)
        return recorded if recorded is not None else sha256_file(self.store.local_path(key))

    def _record(self, tenant: str, report: IntegrityReport) -> None:
        event = MaintenanceCompleted(tenant, "integrity", report.to_json())
        call_retrying(self.db, lambda conn: record_maintenance(conn, tenant, event, "integrity"))
