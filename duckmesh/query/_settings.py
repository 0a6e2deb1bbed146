"""What the query service is configured with, asked, and reports: its
settings, one request, its statistics (kept apart from ``service`` so the
orchestration module stays small; ``service`` re-exports them)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs

from duckmesh.lru import LRUStatistics
from duckmesh.query._result_cache import ResultCacheStatistics


@attrs.frozen
class QuerySettings:
    memory_limit_mb: int = 512
    threads: int = 2
    timeout_s: float = 30.0
    row_limit: int = 10_000
    max_row_limit: int = 1_000_000
    concurrency: int = 8
    consistency_timeout_s: float = 5.0
    max_consistency_timeout_s: float = 60.0
    cache_size: int = 8
    max_sql_bytes: int = 64 * 1024
    tenant_concurrency: int = 4
    tenant_queue: int = 16
    tenant_rate: int = 0  # queries per second per tenant; 0 = unlimited
    # Streamed results: bytes read before the headers leave (exact truncation header).
    stream_readahead_bytes: int = 8 * 1024 * 1024
    max_databases: int = 4096  # tenant databases kept warm
    shared_engine: bool = True  # all tenant databases in one DuckDB instance (ADR 0018)
    result_cache_bytes: int = 16 * 1024 * 1024  # 0 = no result cache
    # TEST ONLY (DUCKMESH_UNSAFE_BREAK=skip_barrier): answer without waiting for
    # the token, so the scenario runner can prove it notices (see barrier.py).
    unsafe_skip_barrier: bool = False


@attrs.frozen
class QueryRequest:
    sql: str
    params: list[Any] | None = None
    snapshot_id: int | None = None
    snapshot_time: dt.datetime | None = None
    min_visibility_token: int | None = None
    consistency_timeout_s: float | None = None
    row_limit: int | None = None


@attrs.frozen
class QueryStatistics:
    databases_built: int  # tenant databases constructed since start (one per tenant load)
    tenant_databases: LRUStatistics
    snapshot_lookups: LRUStatistics  # the explicit snapshot-id lookup cache
    loaded_snapshots: int  # snapshot schemas present in the tenants' databases
    result_cache: ResultCacheStatistics
