"""Everything one DuckMesh process runs, built once from the configuration.

``Runtime`` wires the database, bus, object store, notifications, services
and actors, and declares the supervision tree of each role in one place
(``build_tree``). The CLI builds it; the API reads it; tests build it too.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import attrs
import structlog

from duckmesh import migrations, unsafe
from duckmesh.bus import IngestBus
from duckmesh.bus.postgres import PostgresBus
from duckmesh.catalog import commands, reads
from duckmesh.catalog.model import ROLES
from duckmesh.config import Config
from duckmesh.coordinator.actor import CoordinatorActor
from duckmesh.coordinator.committer import CommitSettings, Committer
from duckmesh.coordinator.health import CommitHealth
from duckmesh.db import Database
from duckmesh.diskspace import DiskGuard
from duckmesh.embedded import EmbeddedPostgres
from duckmesh.files import prepare_data_dir
from duckmesh.ingest.group_commit import GroupCommitter
from duckmesh.logs import show_bootstrap_key
from duckmesh.notify import Notifications
from duckmesh.query.service import QueryService, QuerySettings
from duckmesh.shutdown import ShutdownState
from duckmesh.storage.factory import open_object_store
from duckmesh.storage.protocol import ObjectStore
from duckmesh.supervisors import Supervisor
from duckmesh.supervisors.faults import FaultPoints

log = structlog.get_logger("duckmesh.runtime")


@attrs.define
class Runtime:
    config: Config
    dsn: str
    db: Database
    bus: IngestBus  # the backends are chosen here and nowhere else
    store: ObjectStore
    notifications: Notifications
    faults: FaultPoints
    queries: QueryService
    ingest: GroupCommitter
    embedded: EmbeddedPostgres | None = None
    # The supervision tree, once ``server.serve`` has built it (readiness reads it).
    root: Supervisor | None = None
    # The process group's run directory (duckmesh.procgroup) when this process
    # is one of its workers: shared rate limits and the process tree live there.
    group_dir: Path | None = None
    commit_health: CommitHealth = attrs.field(factory=CommitHealth)
    # Set by a stop signal (duckmesh.shutdown): new requests are answered 503.
    shutdown: ShutdownState = attrs.field(factory=ShutdownState)
    # Free disk of the data directory: ingest backpressure (duckmesh.diskspace).
    disk: DiskGuard = attrs.field(
        default=attrs.Factory(
            lambda self: DiskGuard(self.config.data_dir, self.config.min_free_disk_bytes),
            takes_self=True,
        )
    )

    def close(self) -> None:
        self.queries.close()
        self.db.close()
        if self.embedded is not None:
            self.embedded.stop()


def open_catalog(config: Config, *, owner: bool = False) -> tuple[str, EmbeddedPostgres | None]:
    """The catalog DSN: the configured one, or a started embedded server's
    (``owner``: this process holds the data-directory lock, duckmesh.lifecycle)."""
    if config.catalog_dsn:
        return config.catalog_dsn, None
    embedded = EmbeddedPostgres(config.data_dir, owner=owner)
    return embedded.start(), embedded


def use_system_arrow_allocator() -> None:
    """Arrow buffers from malloc, not pyarrow's default mimalloc: with many
    worker threads each parsing or committing 100,000-row uploads, mimalloc
    kept ~900 MiB resident after a 0.4 GiB load where the system allocator
    peaked at ~430 MiB, and was no faster (ADR 0013). An explicit
    ``ARROW_DEFAULT_MEMORY_POOL`` still wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def build_runtime(
    config: Config, *, dsn: str | None = None, owner: bool = False, embedded_dsn: bool = False
) -> Runtime:
    """``dsn``: use this catalog instead of the configured one (``embedded_dsn``:
    it is the data directory's own, already running Postgres)."""
    unsafe.arm(config.unsafe_break)
    if config.unsafe_break:
        log.warning(
            "unsafe_break_armed",
            unsafe_break=config.unsafe_break,
            message="a guarantee is deliberately broken (DUCKMESH_UNSAFE_BREAK)",
        )
    embedded_here = embedded_dsn or (dsn is None and not config.catalog_dsn)
    use_system_arrow_allocator()
    prepare_data_dir(config.data_dir, embedded_postgres=embedded_here)
    embedded = None
    if dsn is None:
        dsn, embedded = open_catalog(config, owner=owner)
    db = Database(dsn, size=config.db_pool_size, timeout_s=config.db_pool_timeout_ms / 1000)
    bus = PostgresBus(db)
    store = open_object_store(config)
    notifications = Notifications()
    faults = FaultPoints.from_spec(config.faults, enabled=config.enable_faults)
    queries = QueryService(
        db,
        bus,
        store,
        notifications,
        QuerySettings(
            memory_limit_mb=config.query_memory_limit_mb,
            threads=config.query_threads,
            timeout_s=config.query_timeout_ms / 1000,
            row_limit=config.query_row_limit,
            max_row_limit=config.query_max_row_limit,
            concurrency=config.query_concurrency,
            consistency_timeout_s=config.consistency_timeout_ms / 1000,
            max_consistency_timeout_s=config.max_consistency_timeout_ms / 1000,
            cache_size=config.snapshot_cache_size,
            max_sql_bytes=config.query_max_sql_bytes,
            tenant_concurrency=config.tenant_query_concurrency,
            tenant_queue=config.tenant_query_queue,
            tenant_rate=config.tenant_query_rate,
            stream_readahead_bytes=config.query_stream_readahead_mb * 1024 * 1024,
            max_databases=config.query_max_databases,
            shared_engine=config.query_shared_engine,
            result_cache_bytes=config.query_result_cache_bytes,
            unsafe_skip_barrier=config.unsafe_break == "skip_barrier",
        ),
    )
    ingest = GroupCommitter(bus, window_s=config.group_commit_window_ms / 1000, limiter=db.limiter)
    return Runtime(config, dsn, db, bus, store, notifications, faults, queries, ingest, embedded)


def coordinator_actors(rt: Runtime) -> list[CoordinatorActor]:
    cfg = rt.config
    settings = CommitSettings(
        batch_max_records=cfg.batch_max_records,
        batch_max_bytes=cfg.batch_max_bytes,
        lease_s=cfg.lease_ms / 1000,
        backoff_s=cfg.commit_backoff_ms / 1000,
        backoff_max_s=cfg.commit_backoff_max_ms / 1000,
    )
    actors = []
    for n in range(cfg.coordinators):
        consumer = f"{os.uname().nodename}:{os.getpid()}:{n}:{secrets.token_hex(3)}"
        committer = Committer(
            rt.db, rt.bus, rt.store, rt.faults, settings, consumer, rt.commit_health
        )
        actors.append(
            CoordinatorActor(
                f"coordinator-{n}",
                committer,
                rt.notifications,
                flush_interval_s=cfg.flush_interval_ms / 1000,
                linger_s=cfg.commit_linger_ms / 1000,
                busy_interval_s=cfg.commit_busy_interval_ms / 1000,
            )
        )
    return actors


def migrate_and_bootstrap(rt: Runtime) -> str | None:
    """Apply pending migrations; on an empty catalog create tenant ``default``
    and its all-roles key. Returns the generated key when one was generated."""

    def run(conn: Any) -> str | None:
        migrations.migrate_up(conn)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x424F4F54,))
            if reads.tenant_ids(conn):
                return None
            commands.create_tenant(conn, "default", "default", actor="bootstrap")
            given = rt.config.bootstrap_api_key or None
            _, key = commands.issue_key(conn, "default", list(ROLES), key=given, actor="bootstrap")
            return None if given else key

    key = rt.db.call(run, transaction=False)
    if key is not None:
        show_bootstrap_key(key)
    return key
