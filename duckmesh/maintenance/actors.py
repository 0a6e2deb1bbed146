"""Maintenance actors of the ``maintenance`` role.

The compactor visits every tenant each ``compaction_interval_ms`` and merges
small files (see ``compaction``). Every pass re-reads the catalog, so the
actor holds no state that a restart could lose; an interrupted pass leaves
orphan files and nothing visible changed. Retention, GC and integrity are
not built yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from duckmesh.catalog import reads
from duckmesh.maintenance.compaction import CompactionSettings, Compactor
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
            min_files=cfg.compaction_min_files, target_bytes=cfg.compaction_target_bytes
        ),
    )


class CompactorActor(Actor):
    def __init__(self, compactor: Compactor, interval_s: float) -> None:
        super().__init__("compactor")
        self.compactor = compactor
        self.interval_s = interval_s
        self.passes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self.stop_requested.is_set():
            tenants = await self.compactor.db.run(reads.tenant_ids, transaction=False)
            for tenant in tenants:
                if self.stop_requested.is_set():
                    break
                await trio.to_thread.run_sync(
                    self.compactor.compact_tenant, tenant, abandon_on_cancel=False
                )
            self.passes += 1
            with trio.move_on_after(self.interval_s):
                await self.stop_requested.wait()


def maintenance_actors(rt: Runtime) -> list[Actor]:
    return [CompactorActor(compactor_for(rt), rt.config.compaction_interval_ms / 1000)]
