"""Per-tenant ingest limits, checked before any write.

Rate: a tenant may ingest ``rate`` records per second on average with bursts
of up to one second's worth. Storage: a tenant whose published data files
already hold ``quota`` bytes or more is refused until retention or a drop
frees space. A refused request is refused whole with 429 and a Retry-After,
so nothing of it is written. A limit of 0 disables it (the default: a
self-hosted single team rarely wants one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio

from duckmesh.catalog import reads
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError, ErrorCode

# Stored bytes are re-read at most this often per tenant while its snapshots
# change, and at least this often (a drop, retention or another process).
STORAGE_REFRESH_MIN_S = 1.0
STORAGE_REFRESH_MAX_S = 10.0
STORAGE_RETRY_AFTER_S = 30


class RateLimiter:
    """Token buckets per tenant; ``code``/``what``/``unit`` word the refusal
    (ingest: RATE_LIMITED in records/s, queries: QUOTA_EXCEEDED in queries/s)."""

    def __init__(
        self,
        rate: int,
        *,
        code: ErrorCode = "RATE_LIMITED",
        what: str = "ingest",
        unit: str = "records",
    ) -> None:
        self.rate = rate
        self.code = code
        self.what = what
        self.unit = unit
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str, records: int, now: float | None = None) -> None:
        """Spend ``records`` from the tenant's bucket or raise RATE_LIMITED."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(tenant, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - at) * self.rate)
        if records > tokens:
            wait = (records - tokens) / self.rate
            self._buckets[tenant] = (tokens, now)
            raise DuckMeshError(
                self.code,
                f"tenant {self.what} limit is {self.rate} {self.unit}/s; retry in {wait:.2f} s",
                **{f"limit_{self.unit}_per_s": self.rate},
                retry_after_s=max(1, math.ceil(wait)),
            )
        self._buckets[tenant] = (tokens - records, now)


class StorageQuota:
    """Bytes stored per tenant (its live data files), cached: the ingest path
    reads the catalog at most once per refresh interval, not per request."""

    def __init__(
        self,
        db: Database,
        quota: int,
        latest_snapshot: Callable[[str], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.quota = quota
        self._latest_snapshot = latest_snapshot
        self._clock = clock
        # tenant -> (bytes, snapshot id seen when read, monotonic time read)
        self._used: dict[str, tuple[int, int | None, float]] = {}
        self._locks: dict[str, trio.Lock] = {}

    def _fresh(self, tenant: str, now: float) -> int | None:
        cached = self._used.get(tenant)
        if cached is None:
            return None
        used, snapshot, at = cached
        age = now - at
        moved = self._latest_snapshot(tenant) != snapshot
        if age > STORAGE_REFRESH_MAX_S or (moved and age > STORAGE_REFRESH_MIN_S):
            return None
        return used

    async def used(self, tenant: str) -> int:
        used = self._fresh(tenant, self._clock())
        if used is not None:
            return used
        lock = self._locks.setdefault(tenant, trio.Lock())
        async with lock:  # one reader per tenant; the others take its result
            used = self._fresh(tenant, self._clock())
            if used is None:
                snapshot = self._latest_snapshot(tenant)
                used = await self.db.run(lambda c: reads.stored_bytes(c, tenant), transaction=False)
                if len(self._used) > 10_000:
                    self._used.clear()
                self._used[tenant] = (used, snapshot, self._clock())
        return used

    async def check(self, tenant: str) -> None:
        """Raise QUOTA_EXCEEDED when the tenant already stores ``quota`` bytes."""
        if self.quota <= 0:
            return
        used = await self.used(tenant)
        if used >= self.quota:
            raise DuckMeshError(
                "QUOTA_EXCEEDED",
                f"the tenant stores {used} bytes, at or over its quota of {self.quota};"
                " drop tables or shorten retention to write again",
                quota="storage_bytes",
                used_bytes=used,
                limit_bytes=self.quota,
                retry_after_s=STORAGE_RETRY_AFTER_S,
            )
