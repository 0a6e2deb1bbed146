"""The lag monitor: exports how far visibility trails ingest, per tenant.

Every ``interval_s`` it reads the bus positions and sets
``duckmesh_ingest_lag_records`` (durable but not yet visible),
``duckmesh_latest_visibility_token`` (published watermark) and
``duckmesh_visibility_lag_seconds`` (age of the oldest record not yet
visible). Read-only, so restarting it is always safe.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio

from duckmesh import metrics
from duckmesh.bus import IngestBus
from duckmesh.supervisors import Actor


class LagMonitor(Actor):
    def __init__(
        self,
        bus: IngestBus,
        interval_s: float = 1.0,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__("lag-monitor")
        self.bus = bus
        self.limiter = limiter  # the catalog's (``Database.limiter``): catalog reads only
        self.interval_s = interval_s

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self.stop_requested.is_set():
            positions = await trio.to_thread.run_sync(self.bus.lag, limiter=self.limiter)
            oldest = await trio.to_thread.run_sync(
                self._oldest_pending, positions, limiter=self.limiter
            )
            now = dt.datetime.now(dt.UTC)
            for tenant, (latest, committed) in positions.items():
                metrics.INGEST_LAG.labels(tenant=tenant).set(latest - committed)
                metrics.LATEST_TOKEN.labels(tenant=tenant).set(committed)
                since = oldest.get(tenant)
                age = (now - since).total_seconds() if since else 0.0
                metrics.VISIBILITY_LAG.labels(tenant=tenant).set(max(age, 0.0))
            with trio.move_on_after(self.interval_s):
                await self.stop_requested.wait()

    def _oldest_pending(self, positions: dict[str, tuple[int, int]]) -> dict[str, Any]:
        behind = {t: c + 1 for t, (latest, c) in positions.items() if latest > c}
        if not behind:
            return {}
        return self.bus.ingested_at(behind)
