"""Query orchestration: resolve a snapshot, pass the barrier, run the sandbox.

A ``SnapshotDatabase`` is built once per (tenant, snapshot) and kept in a
small LRU, so a query pays no setup that grows with history: views over the
snapshot's exact files, Parquet metadata cached by DuckDB. Concurrency is
bounded; past the queue limit callers get 429 instead of a collapse.

Tenants are kept apart: a tenant runs at most ``tenant_concurrency`` queries
at once (below the server-wide ``concurrency``, so others always find a free
slot) and queues at most ``tenant_queue`` more (then 429 RATE_LIMITED for that
tenant only); ``tenant_rate`` queries per second (0 = unlimited) is a quota
answered with 429 QUOTA_EXCEEDED. On shutdown running queries are interrupted
(after the grace of duckmesh.shutdown) and answered 503 SHUTTING_DOWN.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import trio

from duckmesh import metrics
from duckmesh.bus import IngestBus
from duckmesh.catalog import reads
from duckmesh.catalog.commands import stream_tenant
from duckmesh.catalog.model import Snapshot
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.limits import RateLimiter
from duckmesh.lru import LRU
from duckmesh.notify import Notifications
from duckmesh.query._databases import TenantDatabases
from duckmesh.query._one_hop import OneHop, latest_then_execute
from duckmesh.query._result_cache import (
    CachedResult,
    CacheKey,
    ResultCache,
)
from duckmesh.query._settings import QueryRequest, QuerySettings, QueryStatistics
from duckmesh.query._slots import Handover
from duckmesh.query._streaming import start_stream
from duckmesh.query.barrier import wait_for_token
from duckmesh.query.sandbox import (
    QueryLimits,
    QueryResult,
    SnapshotDatabase,
    SnapshotNotLoaded,
)
from duckmesh.query.stream import StreamHead, produce
from duckmesh.storage.protocol import ObjectStore

__all__ = ["QueryRequest", "QueryService", "QuerySettings", "QueryStatistics"]

T = TypeVar("T")

# A query still running this long after its timeout is answered QUERY_TIMEOUT
# while its thread finishes in the background (holding its slots).
ANSWER_GRACE_S = 0.5


class QueryService:
    def __init__(
        self,
        db: Database,
        bus: IngestBus,
        store: ObjectStore,
        notifications: Notifications,
        settings: QuerySettings,
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.notifications = notifications
        self.settings = settings
        self._limiter = trio.CapacityLimiter(settings.concurrency)
        self._tenant_limiters: dict[str, trio.CapacityLimiter] = {}
        # Queries of a tenant between admission and answer (running or queued),
        # counted at admission: a burst is refused at once, not after it queued.
        self._in_flight: dict[str, int] = {}
        self._quota = RateLimiter(
            settings.tenant_rate, code="QUOTA_EXCEEDED", what="query", unit="queries"
        )
        self._stopping = False
        # One warm database per tenant; each snapshot is a schema in it.
        self._databases = TenantDatabases(
            db,
            store,
            lambda: self._limits(None),
            cache_size=settings.cache_size,
            max_databases=settings.max_databases,
            shared_engine=settings.shared_engine,
        )
        self._results = ResultCache(settings.result_cache_bytes)
        # Snapshots are immutable (but for expiry): explicit-id lookups are
        # cached, and forgotten when the tenant's maintenance stream moves.
        self._snapshots: LRU[tuple[str, int], Snapshot] = LRU(1024)
        notifications.on_event(self._forget_expired)

    def _forget_expired(self, stream: str) -> None:
        tenant = stream_tenant(stream, "maintenance")
        if tenant is not None:
            for key in [k for k in self._snapshots if k[0] == tenant]:
                self._snapshots.pop(key)

    def statistics(self) -> QueryStatistics:
        databases = self._databases.statistics()
        return QueryStatistics(
            databases_built=databases.databases_built,
            tenant_databases=databases.tenant_databases,
            snapshot_lookups=self._snapshots.statistics(),
            loaded_snapshots=databases.loaded_snapshots,
            result_cache=self._results.statistics(),
        )

    def consistency_timeout(self, requested_ms: int | None) -> float:
        if requested_ms is None:
            return self.settings.consistency_timeout_s
        return min(requested_ms / 1000.0, self.settings.max_consistency_timeout_s)

    async def resolve(self, tenant: str, req: QueryRequest) -> Snapshot | None:
        """The snapshot a request reads; None when the tenant has none yet."""
        if req.snapshot_id is not None:
            snap = self._snapshots.get((tenant, req.snapshot_id))
            if snap is None:
                snap = await self.db.run(
                    lambda c: reads.get_snapshot(c, tenant, req.snapshot_id or 0),
                    transaction=False,
                )
                if snap is not None and not snap.expired:
                    self._snapshots.put((tenant, snap.snapshot_id), snap)
            if snap is None or snap.expired:
                raise DuckMeshError(
                    "SNAPSHOT_NOT_FOUND",
                    f"snapshot {req.snapshot_id} does not exist"
                    + (" any more (expired)" if snap else ""),
                    snapshot_id=req.snapshot_id,
                )
            if req.min_visibility_token is not None and (
                snap.max_visibility_token < req.min_visibility_token
            ):
                raise DuckMeshError(
                    "TOKEN_SCOPE_MISMATCH",
                    f"snapshot {snap.snapshot_id} has watermark {snap.max_visibility_token},"
                    f" below min_visibility_token {req.min_visibility_token}",
                    snapshot_id=snap.snapshot_id,
                    watermark=snap.max_visibility_token,
                )
            return snap
        if req.snapshot_time is not None:
            when = req.snapshot_time
            snap = await self.db.run(
                lambda c: reads.snapshot_at(c, tenant, when), transaction=False
            )
            if snap is None or snap.expired:
                raise DuckMeshError(
                    "SNAPSHOT_NOT_FOUND",
                    f"no snapshot at or before {when}"
                    + (f" (snapshot {snap.snapshot_id} expired)" if snap else ""),
                    snapshot_time=when.isoformat(),
                )
            return snap
        timeout = (
            self.settings.consistency_timeout_s
            if req.consistency_timeout_s is None
            else req.consistency_timeout_s
        )
        return await wait_for_token(
            self.db,
            self.bus,
            self.notifications,
            tenant,
            req.min_visibility_token or 0,
            timeout,
            skip=self.settings.unsafe_skip_barrier,
        )

    def _limits(self, row_limit: int | None) -> QueryLimits:
        s = self.settings
        rows = s.row_limit if row_limit is None else row_limit
        if not 1 <= rows <= s.max_row_limit:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"row_limit must be between 1 and {s.max_row_limit}",
                field="row_limit",
            )
        return QueryLimits(
            memory_limit_mb=s.memory_limit_mb,
            threads=s.threads,
            timeout_s=s.timeout_s,
            row_limit=rows,
            max_sql_bytes=s.max_sql_bytes,
        )

    def _tenant_slots(self, tenant: str) -> trio.CapacityLimiter:
        slots = self._tenant_limiters.get(tenant)
        if slots is None:
            share = min(self.settings.tenant_concurrency, self.settings.concurrency)
            slots = self._tenant_limiters[tenant] = trio.CapacityLimiter(share)
        return slots

    def _admit(self, tenant: str) -> trio.CapacityLimiter:
        """The tenant's slots, or 429 when its quota, its queue or the server's is full."""
        if self._stopping:
            raise DuckMeshError("SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
        self._quota.take(tenant, 1)
        slots = self._tenant_slots(tenant)
        if self._in_flight.get(tenant, 0) >= slots.total_tokens + self.settings.tenant_queue:
            raise DuckMeshError(
                "RATE_LIMITED",
                f"this tenant already has {self.settings.tenant_queue} queries waiting; "
                "retry shortly",
                retry_after_s=1,
                tenant_queue=self.settings.tenant_queue,
            )
        if self._limiter.statistics().tasks_waiting >= self.settings.concurrency * 4:
            raise DuckMeshError(
                "RATE_LIMITED", "too many queries waiting; retry shortly", retry_after_s=1
            )
        return slots

    @contextlib.contextmanager
    def _admitted(self, tenant: str) -> Iterator[trio.CapacityLimiter]:
        """Admission (429s), the tenant's in-flight count and the error metric."""
        try:
            slots = self._admit(tenant)
            self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
            try:
                yield slots
            finally:
                self._in_flight[tenant] -= 1
                if not self._in_flight[tenant]:
                    del self._in_flight[tenant]
        except DuckMeshError as exc:
            metrics.QUERY_REQUESTS.labels(status=exc.error_code).inc()
            raise

    @staticmethod
    def _count_ok(elapsed: float, scanned_files: int, scanned_bytes: int) -> None:
        metrics.QUERY_REQUESTS.labels(status="ok").inc()
        metrics.QUERY_LATENCY.observe(elapsed)
        metrics.QUERY_SCANNED_FILES.inc(scanned_files)
        metrics.QUERY_SCANNED_BYTES.inc(scanned_bytes)

    async def execute(
        self,
        tenant: str,
        req: QueryRequest,
        roles: frozenset[str] = frozenset(),
        started: float | None = None,
    ) -> dict[str, Any]:
        """A JSON-ready answer. ``roles`` (the asking key's) scope the result
        cache; ``started`` is when the request arrived (``perf_counter``), so
        ``stats.duration_ms`` covers all of it."""
        started = time.perf_counter() if started is None else started
        limits = self._guarded_limits(tenant, req.row_limit)
        with self._admitted(tenant) as slots:
            hop = await self._one_hop(tenant, req, roles, limits, slots)
            snap = hop.snap if hop is not None else await self.resolve(tenant, req)
            key = self._cache_key(tenant, snap, roles, req, limits)
            cached, result = (hop.cached, hop.result) if hop is not None else (None, None)
            if hop is None and key is not None:
                cached = self._results.get(key)
            if key is not None:
                metrics.QUERY_RESULT_CACHE.labels(outcome="miss" if cached is None else "hit").inc()
            if cached is None and result is None:

                async def start(database: SnapshotDatabase, snapshot_id: int) -> QueryResult:
                    work = functools.partial(
                        database.execute, req.sql, req.params, limits, snapshot_id
                    )
                    return await self._in_thread(slots, work, limits.timeout_s)

                result = await self._run(tenant, snap, start)
            if result is not None and key is not None:
                self._remember(key, result)
        if cached is None:
            assert result is not None
            columns, rows, truncated = result.columns, result.rows, result.truncated
            files, scanned, execution_ms = (
                result.scanned_files,
                result.scanned_bytes,
                result.duration_ms,
            )
        else:
            columns, rows, truncated = cached.columns, cached.rows, cached.truncated
            files, scanned, execution_ms = (
                cached.scanned_files,
                cached.scanned_bytes,
                cached.execution_ms,
            )
        elapsed = time.perf_counter() - started
        self._count_ok(elapsed, files, scanned)
        return {
            "columns": [{"name": n, "type": t} for n, t in columns],
            "rows": rows,
            "truncated": truncated,
            **_snapshot_fields(snap),
            "stats": {
                "duration_ms": round(elapsed * 1000, 3),
                "execution_ms": round(execution_ms, 3),
                "scanned_files": files,
                "scanned_bytes": scanned,
                "cached": cached is not None,
            },
        }

    async def _one_hop(
        self,
        tenant: str,
        req: QueryRequest,
        roles: frozenset[str],
        limits: QueryLimits,
        slots: trio.CapacityLimiter,
    ) -> OneHop | None:
        """The latest snapshot and its answer in one thread hop when the request
        names no snapshot nor token and the tenant's database is warm; None
        otherwise (ADR 0023). The catalog is read in the hop, as ``resolve``
        reads it: read-after-write is unchanged."""
        if (
            req.snapshot_id is not None
            or req.snapshot_time is not None
            or req.min_visibility_token
            or self.settings.unsafe_skip_barrier
        ):
            return None
        database = self._databases.warm(tenant)
        if database is None:
            return None

        def lookup(snap: Snapshot | None) -> CachedResult | None:
            key = self._cache_key(tenant, snap, roles, req, limits)
            return self._results.get(key) if key is not None else None

        def execute(snapshot_id: int) -> QueryResult:
            return database.execute(req.sql, req.params, limits, snapshot_id)

        work = functools.partial(latest_then_execute, self.db, tenant, database, lookup, execute)
        try:
            return await self._in_thread(slots, work, limits.timeout_s)
        except DuckMeshError as exc:
            if exc.error_code == "QUERY_TIMEOUT" and self.stopping():
                raise DuckMeshError(
                    "SHUTTING_DOWN", "the query was stopped: the server is shutting down"
                ) from None
            raise

    def _cache_key(
        self,
        tenant: str,
        snap: Snapshot | None,
        roles: frozenset[str],
        req: QueryRequest,
        limits: QueryLimits,
    ) -> CacheKey | None:
        """The result-cache key; None when caching is off or the tenant has no
        snapshot yet (its tables can change without one)."""
        if not self._results.enabled or snap is None:
            return None
        return CacheKey.of(tenant, snap.snapshot_id, roles, req.sql, req.params, limits.row_limit)

    def _remember(self, key: CacheKey, result: QueryResult) -> None:
        self._results.put(
            key,
            result.columns,
            result.rows,
            truncated=result.truncated,
            scanned_files=result.scanned_files,
            scanned_bytes=result.scanned_bytes,
            execution_ms=result.duration_ms,
        )
        metrics.QUERY_RESULT_CACHE_BYTES.set(self._results.bytes)

    async def stream(
        self, tenant: str, req: QueryRequest, media: str
    ) -> tuple[dict[str, Any], StreamHead, AsyncIterator[bytes]]:
        """A result as ``media`` chunks: snapshot fields, the head, the chunks.
        The query holds its slots until the chunks end or are abandoned."""
        started = time.perf_counter()
        limits = self._guarded_limits(tenant, req.row_limit)
        readahead = self.settings.stream_readahead_bytes
        with self._admitted(tenant) as slots:
            snap = await self.resolve(tenant, req)

            async def start(
                database: SnapshotDatabase, snapshot_id: int
            ) -> tuple[StreamHead, AsyncIterator[bytes]]:
                work = functools.partial(
                    produce, database, req.sql, req.params, limits, snapshot_id, media, readahead
                )

                slots_held = await self._acquire(slots)  # start_stream owns them from here
                return await start_stream(slots_held, work, limits.timeout_s + ANSWER_GRACE_S)

            head, chunks = await self._run(tenant, snap, start)
        self._count_ok(time.perf_counter() - started, head.scanned_files, head.scanned_bytes)
        return _snapshot_fields(snap), head, chunks

    def _guarded_limits(self, tenant: str, row_limit: int | None) -> QueryLimits:
        try:
            return self._limits(row_limit)
        except DuckMeshError as exc:
            metrics.QUERY_REQUESTS.labels(status=exc.error_code).inc()
            raise

    async def _acquire(self, slots: trio.CapacityLimiter) -> contextlib.ExitStack:
        """A tenant slot and a server slot, released when the stack closes."""
        borrower = object()
        with contextlib.ExitStack() as stack:
            await slots.acquire_on_behalf_of(borrower)
            stack.callback(slots.release_on_behalf_of, borrower)
            await self._limiter.acquire_on_behalf_of(borrower)
            stack.callback(self._limiter.release_on_behalf_of, borrower)
            return stack.pop_all()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(
        self,
        tenant: str,
        snap: Snapshot | None,
        start: Callable[[SnapshotDatabase, int], Awaitable[T]],
    ) -> T:
        reloaded = False
        snapshot_id = snap.snapshot_id if snap else 0
        while True:
            if self._stopping:
                raise DuckMeshError("SHUTTING_DOWN", "the server is shutting down; retry elsewhere")
            try:
                database, snapshot_id = await self._databases.get(tenant, snap)
                return await start(database, snapshot_id)
            except SnapshotNotLoaded:
                continue  # evicted while loading or before the run: load it again
            except DuckMeshError as exc:
                # A file DuckDB could not read may only be gone from the local
                # object cache (evicted under its byte bound): load the
                # snapshot again, once, downloading it. Still failing after
                # that, the object itself is damaged: DATA_FILE_CORRUPT stands.
                if (
                    exc.error_code == "DATA_FILE_CORRUPT"
                    and not reloaded
                    and await self._databases.unload_if_evicted(tenant, snapshot_id)
                ):
                    reloaded = True
                    continue
                if exc.error_code == "SNAPSHOT_NOT_FOUND":
                    self._snapshots.pop((tenant, snapshot_id))  # expired since it was cached
                if exc.error_code == "QUERY_TIMEOUT" and self.stopping():
                    raise DuckMeshError(
                        "SHUTTING_DOWN", "the query was stopped: the server is shutting down"
                    ) from None
                raise

    async def _in_thread(
        self, slots: trio.CapacityLimiter, work: Callable[[], T], timeout_s: float
    ) -> T:
        """Run ``work`` in a thread holding a tenant slot and a server slot until
        the thread ends, but answer QUERY_TIMEOUT at the deadline plus a grace
        even if DuckDB has not stopped yet (planning does not always see the
        interrupt): the slots stay taken, so abandoned work cannot pile up."""
        handover = Handover(await self._acquire(slots), trio.lowlevel.current_trio_token())
        try:
            with trio.move_on_after(timeout_s + ANSWER_GRACE_S):
                return await trio.to_thread.run_sync(handover.run, work, abandon_on_cancel=True)
        finally:
            handover.abandon()
        raise DuckMeshError(
            "QUERY_TIMEOUT",
            f"query exceeded the time limit of {timeout_s:g} s and is being stopped",
            timeout_s=timeout_s,
        )

    def stopping(self) -> bool:
        return self._stopping

    def running(self) -> int:
        """Queries admitted and not yet answered (running or queued)."""
        return sum(self._in_flight.values())

    def stop(self) -> None:
        """Refuse new queries and interrupt the running ones (shutdown)."""
        self._stopping = True
        self._databases.interrupt()

    def close(self) -> None:
        self._databases.close()


def _snapshot_fields(snap: Snapshot | None) -> dict[str, Any]:
    return {
        "snapshot_id": snap.snapshot_id if snap else None,
        "snapshot_time": snap.created_at.isoformat() if snap else None,
        "max_visibility_token": snap.max_visibility_token if snap else 0,
    }
