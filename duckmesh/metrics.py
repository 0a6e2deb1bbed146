"""Every Prometheus metric DuckMesh exports, in one registry.

Names follow SPEC §6 with the ``duckmesh_`` prefix. Modules import the metric
objects from here; nothing else creates metrics.

In a process group (duckmesh.procgroup, ADR 0012) every child process runs
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` in the
group's run directory): counters and histograms are summed over the group's
processes, gauges carry a ``pid`` label (live processes only), and whichever
API worker answers ``/v1/metrics`` serves the merged group (``exposition``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from typing import Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

REGISTRY = CollectorRegistry(auto_describe=True)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# In multiprocess mode a gauge is reported per live process (the group root
# marks a dead child's files, duckmesh.procgroup); ignored in one process.
_GAUGE_MODE: Final = "liveall"

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# ingest
INGEST_REQUESTS = Counter(
    "duckmesh_ingest_requests_total", "Ingest requests by outcome.", ["status"], registry=REGISTRY
)
INGEST_RECORDS = Counter(
    "duckmesh_ingest_records_total", "Records accepted as new.", registry=REGISTRY
)
INGEST_DUPLICATES = Counter(
    "duckmesh_ingest_duplicates_total", "Records recognised as retries.", registry=REGISTRY
)
INGEST_ACK_LATENCY = Histogram(
    "duckmesh_ingest_ack_latency_seconds",
    "Time from request receipt to durable acknowledgement.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INGEST_GROUP_SIZE = Histogram(
    "duckmesh_ingest_group_commit_requests",
    "Requests sharing one group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)

# visibility
VISIBILITY_LAG = Gauge(
    "duckmesh_visibility_lag_seconds",
    "Age of the oldest durable record not yet visible, per tenant.",
    ["tenant"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
LATEST_TOKEN = Gauge(
    "duckmesh_latest_visibility_token",
    "Latest published watermark per tenant.",
    ["tenant"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
CONSISTENCY_TIMEOUTS = Counter(
    "duckmesh_consistency_timeouts_total",
    "Barrier waits that timed out.",
    ["kind"],
    registry=REGISTRY,
)
WRITE_TO_VISIBLE = Histogram(
    "duckmesh_write_to_visible_seconds",
    "Time from a record's durable ingest to the commit of the snapshot that holds it.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INGEST_LAG = Gauge(
    "duckmesh_ingest_lag_records",
    "Records durable in the bus but not yet published, per tenant.",
    ["tenant"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)

# commit
COMMIT_BATCH_RECORDS = Histogram(
    "duckmesh_commit_batch_records",
    "Records per committed batch.",
    buckets=(1, 10, 100, 1000, 10_000, 100_000),
    registry=REGISTRY,
)
COMMIT_LATENCY = Histogram(
    "duckmesh_commit_batch_latency_seconds",
    "Claim-to-publish time of one batch.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMIT_PHASE = Histogram(
    "duckmesh_commit_phase_seconds",
    "Wall time of each phase of a commit: claim (scope and batch), plan (catalog"
    " reads), write (Parquet build and durable put), publish (the transaction).",
    ["phase"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CLAIM_RETRIES = Counter(
    "duckmesh_claim_retries_total", "Publishes retried after a stream conflict.", registry=REGISTRY
)
PUBLISH_FAILURES = Counter(
    "duckmesh_snapshot_publish_failures_total",
    "Snapshot publications that failed.",
    ["reason"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "duckmesh_quarantined_records_total",
    "Records that could never be committed and were set aside.",
    registry=REGISTRY,
)
TENANT_COMMIT_FAILURES = Counter(
    "duckmesh_tenant_commit_failures_total",
    "Commits of a tenant's batch that failed even after bisecting (the tenant backs off).",
    ["tenant"],
    registry=REGISTRY,
)
FAILING_TENANTS = Gauge(
    "duckmesh_failing_tenants",
    "Tenants whose latest commit attempt in this process failed.",
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
BISECTED_COMMITS = Counter(
    "duckmesh_bisected_commits_total",
    "Failed commits bisected to find the records that make them fail.",
    registry=REGISTRY,
)

BUS_RETAINED_RECORDS = Gauge(
    "duckmesh_bus_retained_records",
    "Records (and upload rows) the ingest bus holds per tenant, after the last pruning.",
    ["tenant"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
BUS_RETAINED_BYTES = Gauge(
    "duckmesh_bus_retained_bytes",
    "Stored bytes of the records the ingest bus holds per tenant, after the last pruning.",
    ["tenant"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
BUS_PRUNED = Counter(
    "duckmesh_bus_pruned_records_total",
    "Committed bus records (and upload rows) deleted past the idempotency window.",
    registry=REGISTRY,
)

# query
QUERY_REQUESTS = Counter(
    "duckmesh_query_requests_total", "Queries by outcome.", ["status"], registry=REGISTRY
)
QUERY_LATENCY = Histogram(
    "duckmesh_query_latency_seconds",
    "Query latency including barrier wait.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUERY_SCANNED_FILES = Counter(
    "duckmesh_query_scanned_files_total", "Parquet files bound to queries.", registry=REGISTRY
)
QUERY_SCANNED_BYTES = Counter(
    "duckmesh_query_scanned_bytes_total", "Parquet bytes bound to queries.", registry=REGISTRY
)

# maintenance
COMPACTION_RUNS = Counter(
    "duckmesh_compaction_runs_total", "Compaction runs by outcome.", ["status"], registry=REGISTRY
)
COMPACTION_BYTES = Counter(
    "duckmesh_compaction_bytes_rewritten_total", "Bytes rewritten by compaction.", registry=REGISTRY
)
GC_FILES_DELETED = Counter(
    "duckmesh_gc_files_deleted_total", "Files deleted by garbage collection.", registry=REGISTRY
)
INTEGRITY_RUNS = Counter(
    "duckmesh_integrity_runs_total", "Integrity runs by outcome.", ["status"], registry=REGISTRY
)
INTEGRITY_FILES_CHECKED = Counter(
    "duckmesh_integrity_files_checked_total", "Files verified.", registry=REGISTRY
)
INTEGRITY_MISSING = Counter(
    "duckmesh_integrity_missing_files_total", "Referenced files found missing.", registry=REGISTRY
)
INTEGRITY_SIZE_MISMATCH = Counter(
    "duckmesh_integrity_size_mismatches_total",
    "Referenced files with the wrong size or checksum.",
    registry=REGISTRY,
)

# object store and the local immutable-file cache (ADR 0019)
OBJECT_STORE_REQUESTS = Counter(
    "duckmesh_object_store_requests_total",
    "Remote object-store operations by kind and outcome.",
    ["op", "status"],
    registry=REGISTRY,
)
OBJECT_STORE_BYTES = Counter(
    "duckmesh_object_store_bytes_total",
    "Bytes moved to (put) or from (get) the remote object store.",
    ["direction"],
    registry=REGISTRY,
)
OBJECT_CACHE_HITS = Counter(
    "duckmesh_object_cache_hits_total", "Object reads served by the local cache.", registry=REGISTRY
)
OBJECT_CACHE_MISSES = Counter(
    "duckmesh_object_cache_misses_total",
    "Object reads that downloaded the object into the local cache.",
    registry=REGISTRY,
)
OBJECT_CACHE_EVICTIONS = Counter(
    "duckmesh_object_cache_evictions_total",
    "Cached objects evicted (least recently used) to stay within the byte bound.",
    registry=REGISTRY,
)
QUERY_SNAPSHOT_RELOADS = Counter(
    "duckmesh_query_snapshot_reloads_total",
    "Loaded snapshots loaded again because the object cache had evicted their files.",
    registry=REGISTRY,
)
OBJECT_CACHE_BYTES = Gauge(
    "duckmesh_object_cache_bytes",
    "Bytes held by the local object cache.",
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)

# supervision
ACTOR_RESTARTS = Counter(
    "duckmesh_actor_restarts_total", "Actor restarts.", ["actor"], registry=REGISTRY
)
ACTOR_UP = Gauge(
    "duckmesh_actor_up",
    "1 while the actor is running.",
    ["actor"],
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)

# lifecycle and self-healing (ADR 0017)
COMPACTION_DAMAGED_FILES = Counter(
    "duckmesh_compaction_damaged_files_total",
    "Compaction groups skipped because an input file was missing, truncated or unreadable.",
    registry=REGISTRY,
)
POSTGRES_RESTARTS = Counter(
    "duckmesh_postgres_restarts_total",
    "Times the embedded Postgres was found dead and started again.",
    registry=REGISTRY,
)


# query plane budget (docs/OPERATIONS.md, "Threads and memory per tenant")
QUERY_DATABASES = Gauge(
    "duckmesh_query_databases",
    "Tenant query databases kept warm in this process.",
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
PROCESS_THREADS = Gauge(
    "duckmesh_process_threads",
    "Operating-system threads of this process (DuckDB's included).",
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
QUERY_RESULT_CACHE_BYTES = Gauge(
    "duckmesh_query_result_cache_bytes",
    "Estimated bytes of query results held by the result cache.",
    multiprocess_mode=_GAUGE_MODE,
    registry=REGISTRY,
)
QUERY_RESULT_CACHE = Counter(
    "duckmesh_query_result_cache_lookups_total",
    "Result-cache lookups by outcome (hit or miss).",
    ["outcome"],
    registry=REGISTRY,
)


# catalog connection pools (psycopg_pool statistics, read at scrape time)
class _Pool(Protocol):
    name: str

    def stats(self) -> dict[str, int]: ...


# metric name -> (get_stats key, help, scale); gauges are current values,
# counters count since the pool opened.
_POOL_GAUGES: dict[str, tuple[str, str, float]] = {
    "duckmesh_db_pool_max_connections": ("pool_max", "Most connections the pool may open.", 1),
    "duckmesh_db_pool_connections": ("pool_size", "Connections open, idle or in use.", 1),
    "duckmesh_db_pool_idle_connections": ("pool_available", "Connections idle in the pool.", 1),
    "duckmesh_db_pool_requests_waiting": ("requests_waiting", "Checkouts waiting now.", 1),
}
_POOL_COUNTERS: dict[str, tuple[str, str, float]] = {
    "duckmesh_db_pool_requests": ("requests_num", "Connection checkouts.", 1),
    "duckmesh_db_pool_requests_queued": ("requests_queued", "Checkouts that had to wait.", 1),
    "duckmesh_db_pool_wait_seconds": (
        "requests_wait_ms",
        "Time spent waiting for a checkout.",
        1e-3,
    ),
    "duckmesh_db_pool_timeouts": ("requests_errors", "Checkouts that timed out (OVERLOADED).", 1),
    "duckmesh_db_pool_connections_opened": ("connections_num", "Connections opened.", 1),
    "duckmesh_db_pool_connection_errors": ("connections_errors", "Failed connection attempts.", 1),
    "duckmesh_db_pool_connections_lost": (
        "connections_lost",
        "Connections found broken by the checkout check.",
        1,
    ),
}


class PoolStatsCollector:
    """Exports every open ``Database`` pool's statistics, labelled by pool name
    (pools sharing a name are summed), computed when Prometheus scrapes."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
        self._lock = threading.Lock()

    def track(self, pool: _Pool) -> None:
        with self._lock:
            self._pools.add(pool)

    def untrack(self, pool: _Pool) -> None:
        with self._lock:
            self._pools.discard(pool)

    def _totals(self) -> dict[str, dict[str, float]]:
        with self._lock:
            pools = list(self._pools)
        totals: dict[str, dict[str, float]] = {}
        for pool in pools:
            into = totals.setdefault(pool.name, {})
            for key, value in pool.stats().items():
                into[key] = into.get(key, 0) + value
        return totals

    def collect(self) -> Iterator[Metric]:
        totals = self._totals()
        for name, (key, text, scale) in _POOL_GAUGES.items():
            gauge = GaugeMetricFamily(name, text, labels=["pool"])
            for pool, stats in sorted(totals.items()):
                gauge.add_metric([pool], stats.get(key, 0) * scale)
            yield gauge
        for name, (key, text, scale) in _POOL_COUNTERS.items():
            counter = CounterMetricFamily(name, text, labels=["pool"])
            for pool, stats in sorted(totals.items()):
                counter.add_metric([pool], stats.get(key, 0) * scale)
            yield counter


DB_POOLS = PoolStatsCollector()
REGISTRY.register(DB_POOLS)


def exposition() -> bytes:
    """The text ``/v1/metrics`` serves: this process's metrics, or in a
    process group every process's, merged (plus this process's pools)."""
    if not os.environ.get(MULTIPROCESS_ENV):
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    merged.register(DB_POOLS)
    return generate_latest(merged)
