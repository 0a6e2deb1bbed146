"""The tenants' warm query databases and the snapshots loaded in them.

Why it exists: a query must find its tenant's database with the snapshot it
reads already exposed, at a cost that does not grow with the number of
tenants. Each tenant has one ``SnapshotDatabase`` (one schema per loaded
snapshot, at most ``cache_size`` per tenant); by default all of them are
catalogs of one shared ``QueryEngine``, so a tenant costs about 10 KB and no
thread, and ``max_databases`` (thousands) bounds how many stay warm, least
recently used closed first (docs/adr/0018-shared-query-engine.md). With
``shared_engine=False`` every tenant database is a DuckDB instance of its own
(about 4 MB and ``threads`` threads each).

What it guarantees: a tenant's database is built at most once however many
loads ask at once, and a (tenant, snapshot) is loaded at most once at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
import trio

from duckmesh import metrics
from duckmesh.catalog import reads
from duckmesh.catalog.model import Snapshot
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from duckmesh.lru import LRU, LRUStatistics
from duckmesh.query._bindings import table_bindings
from duckmesh.query._engine import QueryEngine
from duckmesh.query.sandbox import QueryLimits, SnapshotDatabase, TableBinding
from duckmesh.storage.protocol import ObjectStore

__all__ = ["DatabasesStatistics", "TenantDatabases", "process_threads"]


def process_threads() -> int:
    """Operating-system threads of this process (DuckDB's native ones included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        import threading

        return threading.active_count()


class _TenantDatabase:
    """A tenant's warm database and the snapshots loaded in it, least recent first.

    A snapshot pushed out of ``loaded`` waits in ``stale`` until the load that
    pushed it drops its schema (in a thread, as DuckDB work)."""

    def __init__(self, database: SnapshotDatabase, cache_size: int) -> None:
        self.database = database
        self.stale: list[int] = []
        self.loaded: LRU[int, None] = LRU(
            cache_size, on_evict=lambda snapshot_id, _: self.stale.append(snapshot_id)
        )


@attrs.frozen
class DatabasesStatistics:
    databases_built: int  # tenant databases constructed since start
    tenant_databases: LRUStatistics
    loaded_snapshots: int  # snapshot schemas present in the tenants' databases


class TenantDatabases:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        limits: Callable[[], QueryLimits],
        *,
        cache_size: int,
        max_databases: int,
        shared_engine: bool,
    ) -> None:
        self.db = db
        self.store = store
        self._limits = limits
        self._cache_size = cache_size
        self._shared = shared_engine
        self._engine: QueryEngine | None = None
        self._engine_lock = trio.Lock()
        self._tenants: LRU[str, _TenantDatabase] = LRU(max_databases, on_evict=self._evicted)
        # Loads in progress: one per (tenant, snapshot), and one database
        # construction per tenant (a second would be built and leaked).
        self._building: dict[tuple[str, int], trio.Event] = {}
        self._constructing: dict[str, trio.Event] = {}
        self._built = 0

    def _evicted(self, _tenant: str, entry: _TenantDatabase) -> None:
        entry.database.close()
        metrics.QUERY_DATABASES.set(len(self._tenants))

    def statistics(self) -> DatabasesStatistics:
        return DatabasesStatistics(
            databases_built=self._built,
            tenant_databases=self._tenants.statistics(),
            loaded_snapshots=sum(len(e.database.snapshot_ids()) for e in self._tenants.values()),
        )

    def warm(self, tenant: str) -> SnapshotDatabase | None:
        """The tenant's database if it is built (no load, no thread)."""
        entry = self._tenants.get(tenant)
        return entry.database if entry is not None else None

    async def get(self, tenant: str, snap: Snapshot | None) -> tuple[SnapshotDatabase, int]:
        """The tenant's warm database, with ``snap`` loaded as a schema."""
        snapshot_id = snap.snapshot_id if snap else 0
        key = (tenant, snapshot_id)
        while True:
            entry = self._tenants.get(tenant)
            if entry is not None and entry.database.has_snapshot(snapshot_id):
                entry.loaded.get(snapshot_id)  # now the tenant's most recent
                return entry.database, snapshot_id
            building = self._building.get(key)
            if building is None:
                break
            await building.wait()
        done = self._building[key] = trio.Event()
        try:
            return await self._load(tenant, snap, snapshot_id), snapshot_id
        finally:
            del self._building[key]
            done.set()

    async def _load(self, tenant: str, snap: Snapshot | None, snapshot_id: int) -> SnapshotDatabase:
        def load(conn: Conn) -> list[TableBinding]:
            if snap is None:
                return table_bindings(self.store, conn, reads.list_tables(conn, tenant), [])
            tables = reads.tables_as_of(conn, tenant, snap.created_at)
            files = reads.snapshot_files(conn, tenant, snap.snapshot_id)
            # ``snap`` was read earlier (or cached): it may have expired since,
            # and GC collects the files of expired snapshots only, so a list
            # read after collection would be short, not refused. Checked after
            # the list, unexpired here means unexpired when the list was read:
            # every file it names was there.
            now = reads.get_snapshot(conn, tenant, snap.snapshot_id)
            if now is None or now.expired:
                raise DuckMeshError(
                    "SNAPSHOT_NOT_FOUND",
                    f"snapshot {snap.snapshot_id} does not exist any more (expired)",
                    snapshot_id=snap.snapshot_id,
                )
            return table_bindings(self.store, conn, tables, files)

        bindings = await self.db.run(load, transaction=False)
        entry = await self._tenant_database(tenant)
        await trio.to_thread.run_sync(entry.database.add_snapshot, snapshot_id, bindings)
        entry.loaded.put(snapshot_id, None)  # past cache_size, the least recent go
        stale, entry.stale = entry.stale, []
        with trio.CancelScope(shield=True):  # out of ``loaded``: dropped now or never
            for old in stale:
                await trio.to_thread.run_sync(entry.database.drop_snapshot, old)
        return entry.database

    async def unload_if_evicted(self, tenant: str, snapshot_id: int) -> bool:
        """Drop a loaded snapshot whose local files the object cache evicted
        (the next ``get`` loads it again, downloading them); False when all of
        its files are still on disk (a real failure, reported as it is). True
        when it is not loaded any more: the caller loads it again."""
        entry = self._tenants.peek(tenant)
        if entry is None or not entry.database.has_snapshot(snapshot_id):
            return True  # already dropped (a concurrent query's reload): load it again
        if not entry.database.files_missing(snapshot_id):
            return False
        entry.loaded.pop(snapshot_id)
        with trio.CancelScope(shield=True):  # out of ``loaded``: dropped now or never
            await trio.to_thread.run_sync(entry.database.drop_snapshot, snapshot_id)
        metrics.QUERY_SNAPSHOT_RELOADS.inc()
        return True

    async def _tenant_database(self, tenant: str) -> _TenantDatabase:
        """The tenant's database, built at most once however many loads ask at once."""
        while True:
            entry = self._tenants.peek(tenant)
            if entry is not None:
                return entry
            constructing = self._constructing.get(tenant)
            if constructing is None:
                break
            await constructing.wait()
        done = self._constructing[tenant] = trio.Event()
        try:
            tenant_dir = str(self.store.directory(tenant))  # 0700, like every data directory
            limits = self._limits()
            engine = await self._shared_engine(tenant_dir, limits) if self._shared else None
            database = await trio.to_thread.run_sync(
                lambda: SnapshotDatabase(allowed_dir=tenant_dir, limits=limits, engine=engine)
            )
            self._built += 1
            entry = _TenantDatabase(database, self._cache_size)
            self._tenants.put(tenant, entry)  # past the limit, the least recent is closed
            metrics.QUERY_DATABASES.set(len(self._tenants))
            metrics.PROCESS_THREADS.set(process_threads())
            return entry
        finally:
            del self._constructing[tenant]
            done.set()

    async def _shared_engine(self, tenant_dir: str, limits: QueryLimits) -> QueryEngine:
        """The process's engine, confined to the data root (the tenant
        directories' parent), built on first use."""
        async with self._engine_lock:
            if self._engine is None:
                root = os.path.dirname(tenant_dir.rstrip(os.sep))
                self._engine = await trio.to_thread.run_sync(
                    lambda: QueryEngine(
                        root, memory_limit_mb=limits.memory_limit_mb, threads=limits.threads
                    )
                )
            return self._engine

    def interrupt(self) -> None:
        for entry in self._tenants.values():
            entry.database.interrupt()

    def close(self) -> None:
        for entry in self._tenants.clear():
            entry.database.close()
        engine, self._engine = self._engine, None
        # A database with a query still running detaches when it ends; the
        # engine is then left to the garbage collector.
        if engine is not None and not engine.databases:
            engine.close()
        metrics.QUERY_DATABASES.set(0)
