"""Pending-records backpressure: refuse ingest while too much of a tenant
waits to become visible (``DUCKMESH_MAX_PENDING_RECORDS``).

The count must hold for the whole process group (ADR 0012), not per API
worker: it is derived from the bus, which every worker shares. A tenant's
pending records are its latest token minus its committed token (tokens are
one contiguous sequence per tenant). Both are read from the bus at most once
per ``REFRESH_S`` per tenant and worker — one catalog round trip, off the
path of the other requests, which use the figure they have meanwhile — and
combined with what this worker knows sooner: the tokens it acknowledged
itself and the watermarks it was notified of. Between refreshes the figure
trails other workers' acknowledgements by at most ``REFRESH_S``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from duckmesh.bus import IngestBus
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError

REFRESH_S = 0.25
MAX_TENANTS = 10_000


class Backlog:
    """Each tenant's pending records as the group sees them, cached briefly."""

    def __init__(
        self,
        bus: IngestBus,
        limit: int,
        *,
        own_latest: Callable[[str], int],
        notified_watermark: Callable[[str], int],
        db: Database,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.limit = limit
        self._own_latest = own_latest
        self._notified = notified_watermark
        self.db = db
        self._clock = clock
        self._read: dict[str, tuple[int, int, float]] = {}  # tenant -> (latest, committed, at)
        self._reading: set[str] = set()

    def _bus_positions(self, tenant: str) -> tuple[int, int]:
        return self.bus.latest_token(tenant), self.bus.committed_token(tenant)

    async def pending(self, tenant: str) -> int:
        """The tenant's records acknowledged but not yet visible, group-wide."""
        read = self._read.get(tenant)
        now = self._clock()
        if (read is None or now - read[2] > REFRESH_S) and tenant not in self._reading:
            self._reading.add(tenant)  # one reader per tenant; the others use what is known
            try:
                latest, committed = await self.db.in_thread(self._bus_positions, tenant)
            finally:
                self._reading.discard(tenant)
            if len(self._read) >= MAX_TENANTS:
                self._read.clear()
            read = self._read[tenant] = (latest, committed, now)
        bus_latest, bus_committed = (read[0], read[1]) if read is not None else (0, 0)
        latest = max(bus_latest, self._own_latest(tenant))
        committed = max(bus_committed, self._notified(tenant))
        return max(0, latest - committed)

    async def check(self, tenant: str) -> None:
        """Raise RATE_LIMITED (429, retryable) while more than ``limit`` are pending."""
        pending = await self.pending(tenant)
        if pending > self.limit:
            raise DuckMeshError(
                "RATE_LIMITED",
                f"{pending} records are waiting to become visible; slow down",
                pending_records=pending,
                retry_after_s=1,
            )
