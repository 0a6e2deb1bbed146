"""Per-tenant ingest limits, checked before any write.

Rate: a tenant may ingest ``rate`` records per second on average with bursts
of up to one second's worth. Storage: a tenant whose published data files
already hold ``quota`` bytes or more is refused until retention or a drop
frees space. A refused request is refused whole with 429 and a Retry-After
(the time until the bucket holds enough), so nothing of it is written; a
request larger than one second's worth can never fit and is refused with
413 PAYLOAD_TOO_LARGE (not retryable) instead. A limit of 0 disables it (the default: a
self-hosted single team rarely wants one).

In a process group (duckmesh.procgroup) the API workers share each tenant's
bucket: it lives in a small file in the group's run directory, read and
written under ``flock`` (a few system calls, no catalog round trip), so a
tenant gets the configured rate in total, not once per worker. The group's
processes share one host by construction (one listening socket), and
``time.monotonic`` is the host's clock, comparable across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from duckmesh.catalog import reads
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError, ErrorCode

# Stored bytes are re-read at most this often per tenant while its snapshots
# change, and at least this often (a drop, retention or another process).
STORAGE_REFRESH_MIN_S = 1.0
STORAGE_REFRESH_MAX_S = 10.0
STORAGE_RETRY_AFTER_S = 30
BUCKET = struct.Struct("<dd")  # tokens, monotonic time of the last update
MAX_OPEN_BUCKETS = 4096


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
        shared_dir: Path | None = None,
    ) -> None:
        self.rate = rate
        self.code = code
        self.what = what
        self.unit = unit
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._shared = None if shared_dir is None else SharedBuckets(shared_dir / "rate-limits")

    def take(self, tenant: str, records: int, now: float | None = None) -> None:
        """Spend ``records`` from the tenant's bucket or raise RATE_LIMITED."""
        if self.rate <= 0:
            return
        if records > self.rate:
            raise self._never_fits(records)
        now = time.monotonic() if now is None else now
        if self._shared is None:
            self._buckets[tenant] = self._spend(self._buckets.get(tenant), records, now)
            return
        with self._shared.locked(tenant) as (saved, store):
            store(self._spend(saved, records, now))

    def _spend(
        self, saved: tuple[float, float] | None, records: int, now: float
    ) -> tuple[float, float]:
        """The bucket after spending ``records``; raises (after ``_refused``) when short."""
        tokens, at = saved or (float(self.rate), now)
        tokens = min(float(self.rate), tokens + max(0.0, now - at) * self.rate)
        if records > tokens:
            raise self._refused((records - tokens) / self.rate)
        return tokens - records, now

    def _refused(self, wait: float) -> DuckMeshError:
        return DuckMeshError(
            self.code,
            f"tenant {self.what} limit is {self.rate} {self.unit}/s; retry in {wait:.2f} s",
            **{f"limit_{self.unit}_per_s": self.rate},
            retry_after_s=max(1, math.ceil(wait)),
        )

    def _never_fits(self, records: int) -> DuckMeshError:
        # The bucket holds at most one second's worth: waiting cannot help.
        return DuckMeshError(
            "PAYLOAD_TOO_LARGE",
            f"the request holds {records} {self.unit}, more than the tenant {self.what} limit"
            f" of {self.rate} {self.unit}/s admits at once; split it into requests of at most"
            f" {self.rate} {self.unit}",
            **{f"limit_{self.unit}_per_s": self.rate},
            requested=records,
        )


class SharedBuckets:
    """Token buckets in files, one per tenant, shared by the processes of a group."""

    def __init__(self, directory: Path) -> None:
        from duckmesh.files import private_dir

        self.directory = private_dir(directory)
        self._fds: dict[str, int] = {}

    def _fd(self, tenant: str) -> int:
        fd = self._fds.get(tenant)
        if fd is None:
            if len(self._fds) >= MAX_OPEN_BUCKETS:
                self.close()
            name = hashlib.sha256(tenant.encode()).hexdigest()[:32]
            fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[tenant] = fd
        return fd

    @contextlib.contextmanager
    def locked(
        self, tenant: str
    ) -> Iterator[tuple[tuple[float, float] | None, Callable[[tuple[float, float]], None]]]:
        """The tenant's saved bucket (None when new) and a function to save it,
        both under an exclusive lock held until the block ends."""
        fd = self._fd(tenant)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, BUCKET.size, 0)
            saved = BUCKET.unpack(raw) if len(raw) == BUCKET.size else None

            def store(bucket: tuple[float, float]) -> None:
                os.pwrite(fd, BUCKET.pack(*bucket), 0)

            yield saved, store
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


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
