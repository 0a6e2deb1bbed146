"""Group commit: concurrent ingest requests of one tenant share one transaction.

Each tenant has at most one flush in flight. Requests that arrive while it
runs queue up and go together in the next one (after an optional short
window), so the per-tenant token order — one counter-row lock per
transaction — does not cap throughput. Every request stays all-or-nothing:
the bus reports a result per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import structlog
import trio

from duckmesh import metrics, tracing
from duckmesh.bus import IngestBus, IngestRecord, Receipts, receipts_summary
from duckmesh.errors import DuckMeshError
from duckmesh.supervisors import Actor

log = structlog.get_logger("duckmesh.ingest")


@attrs.define
class _Pending:
    records: Sequence[IngestRecord]
    trace_id: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    receipts: Receipts | None = None
    error: DuckMeshError | None = None


class GroupCommitter(Actor):
    """Owns the per-tenant flush tasks; ``submit`` is called by API handlers."""

    def __init__(
        self,
        bus: IngestBus,
        *,
        window_s: float,
        max_group_records: int = 50_000,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__("ingest")
        self.bus = bus
        # The catalog's Trio-side limiter (``Database.limiter``): a publish is
        # one catalog transaction in a worker thread, like ``Database.run``.
        self.limiter = limiter
        self.window_s = window_s
        self.max_group_records = max_group_records
        self.latest_token: dict[str, int] = {}
        self._queues: dict[str, list[_Pending]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self.stop_requested.wait()
                self._nursery = None  # refuse new work; in-flight flushes finish
        finally:
            self._nursery = None
            for queue in self._queues.values():
                for pending in queue:
                    pending.error = DuckMeshError("NOT_READY", "ingest is shutting down")
                    pending.done.set()
            self._queues.clear()

    async def submit(self, tenant: str, records: Sequence[IngestRecord]) -> Receipts:
        nursery = self._nursery
        if nursery is None:
            raise DuckMeshError("NOT_READY", "ingest is not running; retry shortly")
        # The request's trace (bound by the API) goes with its rows on the bus.
        pending = _Pending(records, tracing.current())
        queue = self._queues.get(tenant)
        if queue is None:
            self._queues[tenant] = [pending]
            nursery.start_soon(self._flusher, tenant)
        else:
            queue.append(pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.receipts is not None
        return pending.receipts

    async def _flusher(self, tenant: str) -> None:
        try:
            while self._queues.get(tenant):
                if self.window_s:
                    await trio.sleep(self.window_s)
                queue = self._queues[tenant]
                group: list[_Pending] = []
                size = 0
                while queue and (
                    not group or size + len(queue[0].records) <= self.max_group_records
                ):
                    size += len(queue[0].records)
                    group.append(queue.pop(0))
                await self._flush(tenant, group)
        finally:
            self._queues.pop(tenant, None)

    async def _flush(self, tenant: str, group: list[_Pending]) -> None:
        metrics.INGEST_GROUP_SIZE.observe(len(group))
        try:
            results = await trio.to_thread.run_sync(
                self.bus.publish,
                tenant,
                [p.records for p in group],
                [p.trace_id for p in group],
                limiter=self.limiter,
                abandon_on_cancel=False,
            )
        except Exception as exc:  # the transaction rolled back: nothing was written
            log.exception("group commit failed", tenant_id=tenant, requests=len(group))
            # A retryable catalog error (OVERLOADED: no pooled connection in
            # time) reaches the client as it is; anything else is INTERNAL.
            known = exc if isinstance(exc, DuckMeshError) and exc.retryable else None
            for p in group:
                p.error = (
                    known
                    if known is not None
                    else DuckMeshError(
                        "INTERNAL",
                        "the write failed and was not applied; retry",
                        cause=type(exc).__name__,
                    )
                )
                p.done.set()
            return
        for p, result in zip(group, results, strict=True):
            if isinstance(result, DuckMeshError):
                p.error = result
            else:
                p.receipts = result
                if result:
                    top = receipts_summary(result)[1]
                    if top > self.latest_token.get(tenant, 0):
                        self.latest_token[tenant] = top
            p.done.set()
