"""The change feed: the rows of one table inserted, upserted or deleted
between two snapshots (``GET /v1/tables/{name}/changes``).

Why it exists: consumers that mirror a table want "what changed since the
snapshot I last saw", not the whole table again. Every stored row carries
its visibility token (``_dm_token``) and op (``_dm_op``), and a snapshot
with watermark ``W`` holds exactly the rows with tokens up to ``W``, so the
rows that arrived after snapshot A and by snapshot B are B's rows with a
token above A's watermark.

What it guarantees:

* Append-only tables: every such row, op ``insert``, in token order.
* Keyed tables: the net change per key: for each key written after A, its
  newest row by B (an upsert, an insert, or a delete, whose other columns
  are null). A key deleted by B is listed only when it was live in A (a key
  both inserted and deleted in between is no change). Compaction keeps the
  newest row per key, tombstones included, so this holds across it.
* Deciding "live in A" reads A's files: when GC has deleted any of them
  (A expired long ago), the feed is refused with 410 SNAPSHOT_EXPIRED rather
  than answered wrongly.
* Columns are the table's as of B, then ``_dm_token`` and ``_dm_op``
  (names no table column can have). The SQL is ours (built from catalog
  paths, never from the request) and runs in a private DuckDB database under
  the query memory, thread and time limits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import attrs
import duckdb

from duckmesh.catalog import reads
from duckmesh.catalog.model import DataFile, Snapshot
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from duckmesh.query._bindings import table_bindings
from duckmesh.query._json_result import ARROW_BATCH_ROWS, rows_from_arrow
from duckmesh.query._watchdog import WATCHDOG
from duckmesh.query.sandbox import QueryLimits, TableBinding
from duckmesh.query.stream import ROWS_PER_BATCH, StreamHead, emit_batches
from duckmesh.storage.layout import (
    DELETE_OP,
    OP_COLUMN,
    TOKEN_COLUMN,
    cast_projection,
    newest_per_key,
    quote_ident,
    quote_literal,
    read_parquet_sql,
)
from duckmesh.storage.protocol import ObjectStore

__all__ = ["ChangeFeed", "changes_json", "plan_changes", "produce_changes"]


@attrs.frozen
class ChangeFeed:
    """What one change-feed request reads."""

    table: str
    from_snapshot: Snapshot | None  # None: before the first snapshot
    to_snapshot: Snapshot
    before: TableBinding  # the table's files in A (B's schema)
    after: TableBinding  # the table's files in B

    @property
    def from_watermark(self) -> int:
        return self.from_snapshot.max_visibility_token if self.from_snapshot else 0

    def head(self, truncated: bool | None, started: float) -> StreamHead:
        files = self.before.files + self.after.files
        return StreamHead(
            truncated=truncated,
            scanned_files=len(files),
            scanned_bytes=self.before.total_bytes + self.after.total_bytes,
            execution_ms=(time.perf_counter() - started) * 1000.0,
        )


def _not_found(snapshot_id: int) -> DuckMeshError:
    return DuckMeshError(
        "SNAPSHOT_NOT_FOUND", f"snapshot {snapshot_id} does not exist", snapshot_id=snapshot_id
    )


async def plan_changes(
    db: Database,
    store: ObjectStore,
    tenant: str,
    name: str,
    from_id: int,
    to_id: int | None,
) -> ChangeFeed:
    """Resolve the snapshots, the table as of B and both file sets; refuse
    unknown snapshots, a reversed range and collected files."""
    if to_id is not None and from_id > to_id:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"from_snapshot {from_id} is after to_snapshot {to_id}",
            field="from_snapshot",
        )

    def load(c: Conn) -> ChangeFeed:
        to_snap = reads.latest_snapshot(c, tenant) if to_id is None else None
        to_snap = to_snap or reads.get_snapshot(c, tenant, to_id or 0)
        if to_snap is None:
            raise _not_found(to_id or 0)
        from_snap = reads.get_snapshot(c, tenant, from_id) if from_id else None
        if from_id and from_snap is None:
            raise _not_found(from_id)
        if from_snap is not None and from_snap.snapshot_id > to_snap.snapshot_id:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"from_snapshot {from_id} is after the latest snapshot {to_snap.snapshot_id}",
                field="from_snapshot",
            )
        found = [
            t
            for t in reads.tables_as_of(c, tenant, to_snap.created_at)
            if t.name.lower() == name.lower()
        ]
        if not found:
            raise DuckMeshError(
                "TABLE_NOT_FOUND",
                f"table {name!r} does not exist in snapshot {to_snap.snapshot_id}",
                table=name,
            )
        table = found[0]

        def files_of(snap: Snapshot | None) -> list[DataFile]:
            if snap is None:
                return []
            mine = [
                f
                for f in reads.snapshot_files(c, tenant, snap.snapshot_id)
                if f.table_id == table.table_id
            ]
            missing = [f.path for f in mine if not store.local_path(f.path).exists()]
            if missing:
                raise DuckMeshError(
                    "SNAPSHOT_EXPIRED",
                    f"snapshot {snap.snapshot_id} expired and {len(missing)} of its files of "
                    f"table {table.name!r} were garbage-collected; the change feed needs them "
                    "(ask from a newer snapshot, or pin snapshots you will read changes from)",
                    snapshot_id=snap.snapshot_id,
                    missing_files=len(missing),
                )
            return mine

        before = table_bindings(store, c, [table], files_of(from_snap))[0]
        after = table_bindings(store, c, [table], files_of(to_snap))[0]
        return ChangeFeed(table.name, from_snap, to_snap, before, after)

    return await db.run(load, transaction=False)


def _empty(columns: list[tuple[str, str]]) -> str:
    nulls = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(n)}" for n, t in columns)
    return f"SELECT {nulls} WHERE false"


def changes_sql(feed: ChangeFeed) -> str:
    """The SELECT of the feed (see the module docstring)."""
    columns = [(c.name, c.type) for c in feed.after.columns]
    system = [(TOKEN_COLUMN, "BIGINT"), (OP_COLUMN, "VARCHAR")]
    if not feed.after.files:
        return _empty(columns + system)
    source = read_parquet_sql(feed.after.files, union_by_name=True)
    changed = (
        f"SELECT {cast_projection(columns, feed.after.file_columns)},"
        f" {quote_ident(TOKEN_COLUMN)}, {quote_ident(OP_COLUMN)}"
        f" FROM {source} WHERE {quote_ident(TOKEN_COLUMN)} > {int(feed.from_watermark)}"
    )
    order = f" ORDER BY {quote_ident(TOKEN_COLUMN)}"
    keys = feed.after.primary_key
    if not keys:
        return changed + order
    changed += f" {newest_per_key(keys)}"
    key_columns = [(n, t) for n, t in columns if n in keys]
    if feed.before.files:
        latest = (
            f"SELECT * FROM {read_parquet_sql(feed.before.files, union_by_name=True)}"
            f" {newest_per_key(keys)}"
        )
        live = (
            f"SELECT {cast_projection(key_columns, feed.before.file_columns)} FROM ({latest})"
            f" AS latest WHERE latest.{quote_ident(OP_COLUMN)} <> {quote_literal(DELETE_OP)}"
        )
    else:
        live = _empty(key_columns)
    match = " AND ".join(f"b.{quote_ident(k)} = c.{quote_ident(k)}" for k in keys)
    return (
        f"WITH changed AS ({changed}), was_live AS ({live})"
        f" SELECT * FROM changed AS c WHERE c.{quote_ident(OP_COLUMN)} <>"
        f" {quote_literal(DELETE_OP)} OR EXISTS (SELECT 1 FROM was_live AS b WHERE {match})" + order
    )


@contextlib.contextmanager
def _relation(feed: ChangeFeed, limits: QueryLimits) -> Iterator[duckdb.DuckDBPyRelation]:
    """The feed's relation in a private DuckDB database under the query limits."""
    conn = duckdb.connect(":memory:")
    alarm = WATCHDOG.arm(limits.timeout_s, conn.interrupt)
    try:
        for statement in (
            f"SET memory_limit = '{int(limits.memory_limit_mb)}MB'",
            f"SET threads = {int(limits.threads)}",
            "SET temp_directory = ''",
            "SET TimeZone = 'UTC'",
        ):
            conn.execute(statement)
        yield conn.sql(changes_sql(feed))
    except duckdb.Error as exc:
        if alarm.disarm():
            raise DuckMeshError(
                "QUERY_TIMEOUT",
                f"the change feed exceeded the time limit of {limits.timeout_s:g} s",
                timeout_s=limits.timeout_s,
            ) from exc
        if isinstance(exc, duckdb.OutOfMemoryException):
            raise DuckMeshError(
                "QUERY_MEMORY_EXCEEDED",
                f"the change feed exceeded the memory limit of {limits.memory_limit_mb} MB;"
                " ask for a shorter range",
                memory_limit_mb=limits.memory_limit_mb,
            ) from exc
        raise DuckMeshError("INTERNAL", f"change feed failed: {type(exc).__name__}") from exc
    finally:
        alarm.disarm()
        conn.close()


def produce_changes(
    feed: ChangeFeed,
    limits: QueryLimits,
    media: str,
    readahead_bytes: int,
    emit: Any,
) -> None:
    """Stream the feed as ``media`` (in a thread, for ``start_stream``)."""
    started = time.perf_counter()
    with _relation(feed, limits) as relation:
        reader = relation.to_arrow_reader(ROWS_PER_BATCH)
        emit_batches(
            reader,
            list(relation.types),
            limits.row_limit,
            media,
            readahead_bytes,
            emit,
            lambda truncated: feed.head(truncated, started),
        )


def changes_json(feed: ChangeFeed, limits: QueryLimits) -> dict[str, Any]:
    """The feed as the JSON body (in a thread)."""
    started = time.perf_counter()
    with _relation(feed, limits) as relation:
        types = list(relation.types)
        rows, truncated = rows_from_arrow(
            relation.to_arrow_reader(ARROW_BATCH_ROWS),
            types,
            limits.row_limit,
            limits.max_result_bytes,
        )
        columns = [
            {"name": n, "type": str(t)} for n, t in zip(relation.columns, types, strict=True)
        ]
    head = feed.head(truncated, started)
    return {
        "table": feed.table,
        "from_snapshot": feed.from_snapshot.snapshot_id if feed.from_snapshot else 0,
        "from_watermark": feed.from_watermark,
        "to_snapshot": feed.to_snapshot.snapshot_id,
        "to_watermark": feed.to_snapshot.max_visibility_token,
        "columns": columns,
        "rows": rows,
        "truncated": truncated,
        "stats": {
            "execution_ms": round(head.execution_ms, 3),
            "scanned_files": head.scanned_files,
            "scanned_bytes": head.scanned_bytes,
        },
    }
