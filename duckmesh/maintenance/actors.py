"""Maintenance actors of the ``maintenance`` role.

The compactor visits every tenant each ``compaction_interval_ms`` and merges
small files (see ``compaction``); the collector visits every tenant each
``maintenance_interval_ms`` to expire old snapshots and delete files nothing
references any more (see ``gc``); the integrity actor checks every tenant's
files each ``integrity_interval_ms`` at a bounded read rate (see
``integrity``). Every pass re-reads the catalog, so the actors hold no state
that a restart could lose; an interrupted pass leaves nothing visible
changed. After each pass over the tenants the collector vacuums the catalog
tables it pruned and checkpoints the catalog (``checkpoint``) once enough
events accumulated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
import trio

from duckmesh.catalog import reads
from duckmesh.db import Database
from duckmesh.maintenance import checkpoint
from duckmesh.maintenance.compaction import CompactionSettings, Compactor
from duckmesh.maintenance.gc import Collector, RetentionSettings
from duckmesh.maintenance.integrity import CheckStopped, IntegrityChecker, Pacer
from duckmesh.supervisors import Actor

if TYPE_CHECKING:
    from duckmesh.runtime import Runtime

log = structlog.get_logger("duckmesh.maintenance")


def compactor_for(rt: Runtime) -> Compactor:
    cfg = rt.config
    return Compactor(
        rt.db,
        rt.store,
        rt.faults,
        CompactionSettings(
            min_files=cfg.compaction_min_files,
            target_bytes=cfg.compaction_target_bytes,
            memory_mb=cfg.compaction_memory_mb,
        ),
    )


def collector_for(rt: Runtime) -> Collector:
    cfg = rt.config
    return Collector(
        rt.db,
        rt.store,
        RetentionSettings(
            retain_count=cfg.snapshot_retain_count,
            retain_s=cfg.snapshot_retain_ms / 1000,
            safety_window_s=cfg.gc_safety_window_ms / 1000,
            idempotency_window_s=cfg.idempotency_window_ms / 1000,
            maintenance_runs_kept=cfg.maintenance_runs_kept,
        ),
        bus=rt.bus,
    )


class TenantPassActor(Actor):
    """Runs ``job(tenant)`` for every tenant, then ``after_pass()`` (work that
    is not per tenant), then waits ``interval_s``."""

    def __init__(
        self,
        name: str,
        job: Callable[[str], object],
        db: Database,
        interval_s: float,
        after_pass: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(name)
        self.job = job
        self.db = db
        self.interval_s = interval_s
        self.after_pass = after_pass
        self.passes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self.stop_requested.is_set():
            tenants = await self.db.run(reads.tenant_ids, transaction=False)
            for tenant in tenants:
                if self.stop_requested.is_set():
                    break
                await trio.to_thread.run_sync(self.job, tenant, abandon_on_cancel=False)
            if self.after_pass is not None and not self.stop_requested.is_set():
                await trio.to_thread.run_sync(self.after_pass, abandon_on_cancel=False)
            self.passes += 1
            with trio.move_on_after(self.interval_s):
                await self.stop_requested.wait()


class IntegrityActor(TenantPassActor):
    """Checks every tenant's files each ``interval_s`` (the first time one
    interval after its start) at a bounded read rate."""

    def __init__(self, rt: Runtime, interval_s: float) -> None:
        self.pacer = Pacer(rt.config.integrity_bytes_per_s)
        checker = IntegrityChecker(rt.db, rt.store, self.pacer)
        super().__init__("integrity", self._check, rt.db, interval_s)
        self.checker = checker

    def _check(self, tenant: str) -> None:
        with contextlib.suppress(CheckStopped):  # stopping: the next run checks again
            self.checker.verify(tenant)

    def request_stop(self) -> None:
        super().request_stop()
        self.pacer.stop.set()  # ends a paced sleep in the worker thread

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The first pass comes one interval after the start: a restarted
        # process does not reread every file at once.
        self.pacer.stop.clear()
        task_status.started()
        with trio.move_on_after(self.interval_s):
            await self.stop_requested.wait()
        if not self.stop_requested.is_set():
            await super().run()


def collector_after_pass(rt: Runtime, collector: Collector) -> Callable[[], None]:
    """The collector's work after a pass over the tenants (not per tenant)."""

    def after_pass() -> None:
        collector.vacuum_catalog()
        checkpoint.take(rt.db, rt.store, min_events=rt.config.catalog_checkpoint_events)

    return after_pass


def maintenance_actors(rt: Runtime) -> list[Actor]:
    cfg = rt.config
    collector = collector_for(rt)
    actors: list[Actor] = [
        TenantPassActor(
            "compactor", compactor_for(rt).compact, rt.db, cfg.compaction_interval_ms / 1000
        ),
        TenantPassActor(
            "collector",
            collector.retain,
            rt.db,
            cfg.maintenance_interval_ms / 1000,
            after_pass=collector_after_pass(rt, collector),
        ),
    ]
    if cfg.integrity_interval_ms:
        actors.append(IntegrityActor(rt, cfg.integrity_interval_ms / 1000))
    return actors
