"""A query of the latest snapshot in one thread hop (ADR 0023).

Why it exists: a tiny query paid two thread hops, one for the catalog read of
the tenant's latest snapshot and one for DuckDB. When the request names no
snapshot and no visibility token, and the tenant's database is warm, the
same worker thread reads the latest snapshot, looks up the result cache and,
when that snapshot is already loaded, runs the statement. The catalog is
still read for every such query, after the request arrived, exactly as the
two-hop path reads it, so read-after-write is unchanged. Anything else (not
loaded, dropped meanwhile, a file the object cache evicted) returns the
snapshot without a result, and the caller takes the ordinary path with it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from duckmesh.catalog import reads
from duckmesh.catalog.model import Snapshot
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError
from duckmesh.query._result_cache import CachedResult
from duckmesh.query.sandbox import QueryResult, SnapshotDatabase, SnapshotNotLoaded


@attrs.frozen
class OneHop:
    snap: Snapshot | None
    cached: CachedResult | None = None
    result: QueryResult | None = None


def latest_then_execute(
    db: Database,
    tenant: str,
    database: SnapshotDatabase,
    lookup: Callable[[Snapshot | None], CachedResult | None],
    execute: Callable[[int], QueryResult],
) -> OneHop:
    """Runs in a worker thread holding the query's slots."""
    snap = db.call(lambda conn: reads.latest_snapshot(conn, tenant), transaction=False)
    cached = lookup(snap)
    if cached is not None:
        return OneHop(snap, cached=cached)
    snapshot_id = snap.snapshot_id if snap else 0
    if not database.has_snapshot(snapshot_id):
        return OneHop(snap)
    try:
        return OneHop(snap, result=execute(snapshot_id))
    except SnapshotNotLoaded:
        return OneHop(snap)
    except DuckMeshError as exc:
        if exc.error_code == "DATA_FILE_CORRUPT" and database.files_missing(snapshot_id):
            return OneHop(snap)  # evicted from the object cache: the ordinary path reloads
        raise
