"""Sandboxed execution of tenant SQL over exactly one published snapshot.

Why it exists: a query must see one tenant's tables as of one snapshot, with
upserts resolved and deletes hidden, and nothing else on the machine: no other
tenant's files, no settings, no extensions, no writes.

What it guarantees:

* ``SnapshotDatabase`` is a private in-memory DuckDB database whose only
  objects are one VIEW per bound table. Each view reads exactly the snapshot's
  Parquet files, casts every column to the table's current type (columns absent
  from old files read as NULL), never shows the ``_dm_*`` system columns, and
  for keyed tables shows only the newest row per key unless it is a delete.
* The database is a catalog of a ``QueryEngine`` (a DuckDB instance configured
  and sealed before any tenant SQL runs: no SET, no extensions, no spilling,
  file access confined to one directory, see ``_engine``): either an engine of
  its own, confined to the tenant's directory, or one shared by every tenant
  of the process, confined to the data root (docs/adr/0018-shared-query-engine.md).
  Tenant SQL can name no file and no other catalog (``_sqlcheck``): it reads
  files only through the views, built here from paths checked to lie in the
  tenant's directory.
* A table whose view cannot be built because one of its files is unreadable
  is left out and answers ``DATA_FILE_CORRUPT`` when queried; the snapshot's
  other tables keep working (``_failures``).
* ``execute`` runs only SQL accepted by ``check_sql`` (one read-only SELECT,
  see ``_sqlcheck``), referring only to bound tables or its own CTEs, with a
  time limit (the cursor is interrupted), a row limit and a result-size limit,
  and returns JSON-ready values (``_json_result``, ``_convert``). DuckDB errors become
  ``DuckMeshError`` with the data directory replaced by ``<data>``.
* Several queries may run at once on one database, each on its own cursor.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence

import attrs
import duckdb

from duckmesh.errors import DuckMeshError
from duckmesh.query._binding_check import validate_binding
from duckmesh.query._engine import QueryEngine
from duckmesh.query._failures import damaged_table, map_error, unreadable_file
from duckmesh.query._json_result import json_result
from duckmesh.query._sqlcheck import (
    DEFAULT_MAX_SQL_BYTES,
    SqlAnalysis,
    analyze,
    check_params,
    check_sql,
)
from duckmesh.query._watchdog import WATCHDOG
from duckmesh.storage import layout
from duckmesh.storage.layout import quote_ident

__all__ = [
    "ColumnSpec",
    "QueryLimits",
    "QueryResult",
    "SnapshotDatabase",
    "TableBinding",
    "check_sql",
]

# Idle cursors kept per loaded snapshot, their session already in its schema.
_IDLE_CURSORS = 4


@attrs.frozen
class ColumnSpec:
    """One column of a table's current schema; ``type`` is a DuckDB type name."""

    name: str
    type: str
    nullable: bool = True


@attrs.frozen
class TableBinding:
    """A table as of one snapshot: its current schema and exactly its files."""

    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    files: tuple[str, ...]
    file_columns: tuple[str, ...]
    total_bytes: int = 0
    # True when every file was written with exactly ``columns`` (same names,
    # types and order): the view then reads the files as they are, without
    # union_by_name or casts, which is as fast as a raw read_parquet.
    uniform: bool = False


@attrs.frozen
class QueryLimits:
    """Resource limits; memory and threads apply per ``SnapshotDatabase``."""

    memory_limit_mb: int = 512
    threads: int = 2
    timeout_s: float = 30.0
    row_limit: int = 10_000
    max_result_bytes: int = 64 * 1024 * 1024
    max_sql_bytes: int = DEFAULT_MAX_SQL_BYTES


@attrs.frozen
class QueryResult:
    """Rows are JSON-ready; ``truncated`` when rows were cut by row or size limit."""

    columns: tuple[tuple[str, str], ...]
    rows: list[list[object]]
    truncated: bool
    scanned_files: int
    scanned_bytes: int
    duration_ms: float


def view_query(binding: TableBinding) -> str:
    """The SELECT behind a binding's view (see the module docstring)."""
    return layout.view_sql(
        [(column.name, column.type) for column in binding.columns],
        binding.primary_key,
        [os.path.abspath(path) for path in binding.files],
        binding.file_columns,
        uniform=binding.uniform,
    )


class SnapshotNotLoaded(KeyError):
    """The snapshot was dropped from the database (evicted); load it again."""


class SnapshotDatabase:
    """A private in-memory DuckDB database exposing exactly one snapshot of one tenant."""

    def __init__(
        self,
        bindings: Sequence[TableBinding] | None = None,
        *,
        allowed_dir: str,
        limits: QueryLimits,
        snapshot_id: int = 0,
        engine: QueryEngine | None = None,
    ) -> None:
        self._allowed_dir = os.path.abspath(allowed_dir)
        # Without a shared engine the database is a DuckDB instance of its own,
        # whose file access is confined to this tenant's directory.
        self._owns_engine = engine is None
        if engine is None:
            engine = QueryEngine(
                self._allowed_dir, memory_limit_mb=limits.memory_limit_mb, threads=limits.threads
            )
        self._engine = engine
        self._scrub = sorted(
            {
                path
                for root in (self._allowed_dir, engine.allowed_dir)
                for path in (root, os.path.realpath(root))
            },
            key=len,
            reverse=True,
        )
        # snapshot id -> lower-case table name -> binding; each snapshot's views
        # live in their own schema, so one warm DuckDB instance (and its Parquet
        # metadata cache) serves every snapshot of the tenant.
        self._snapshots: dict[int, dict[str, TableBinding]] = {}
        # snapshot id -> lower-case table name -> the unreadable file (no view).
        self._damaged: dict[int, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._active: set[duckdb.DuckDBPyConnection] = set()
        self._idle: dict[int, list[duckdb.DuckDBPyConnection]] = {}
        self._closed = False
        self._catalog = ""
        try:
            self._catalog = engine.attach()
            self._conn = engine.cursor()  # this database's own DDL connection
            if bindings is not None:
                self.add_snapshot(snapshot_id, bindings)
        except BaseException:
            self._closed = True
            self._dispose()
            raise

    def _schema(self, snapshot_id: int) -> str:
        return f"{self._catalog}.snap_{int(snapshot_id)}"

    def add_snapshot(self, snapshot_id: int, bindings: Sequence[TableBinding]) -> None:
        """Expose one snapshot: a schema holding one view per table binding."""
        tables: dict[str, TableBinding] = {}
        for binding in bindings:
            validate_binding(binding, self._allowed_dir)
            key = binding.name.lower()
            if key in tables:
                raise ValueError(f"table {binding.name!r} is bound twice")
            tables[key] = binding
        schema = self._schema(snapshot_id)
        with self._lock:
            if self._closed:  # evicted while the caller loaded: it builds anew
                raise SnapshotNotLoaded(snapshot_id)
            if snapshot_id in self._snapshots:
                return
            self._conn.execute(f"CREATE SCHEMA {schema}")
            damaged: dict[str, str] = {}
            try:
                for key, binding in tables.items():
                    path = self._create_view(schema, binding)
                    if path is not None:
                        damaged[key] = path
            except BaseException:
                self._conn.execute(f"DROP SCHEMA {schema} CASCADE")
                raise
            self._damaged[snapshot_id] = damaged
            self._snapshots[snapshot_id] = tables

    def has_snapshot(self, snapshot_id: int) -> bool:
        return snapshot_id in self._snapshots

    def snapshot_ids(self) -> list[int]:
        return list(self._snapshots)

    def files_missing(self, snapshot_id: int) -> bool:
        """Whether a file of a loaded snapshot is gone from disk: a cache-backed
        store evicted its local copy (the object itself is intact)."""
        tables = self._snapshots.get(snapshot_id, {})
        return any(not os.path.exists(p) for b in tables.values() for p in b.files)

    def drop_snapshot(self, snapshot_id: int) -> None:
        """Forget a snapshot; queries already running on it finish normally."""
        with self._lock:
            self._damaged.pop(snapshot_id, None)
            for cursor in self._idle.pop(snapshot_id, []):
                cursor.close()
            if self._snapshots.pop(snapshot_id, None) is not None and not self._closed:
                self._conn.execute(f"DROP SCHEMA {self._schema(snapshot_id)} CASCADE")

    # -- setup -----------------------------------------------------------------

    def _create_view(self, schema: str, binding: TableBinding) -> str | None:
        """Create the binding's view; when one of its files cannot be read,
        create none and return that file (the table answers DATA_FILE_CORRUPT)."""
        sql = f"CREATE VIEW {schema}.{quote_ident(binding.name)} AS {view_query(binding)}"
        statements = self._conn.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.CREATE:
            raise ValueError(f"table binding {binding.name!r} does not form a single view")
        try:
            self._conn.execute(sql)
        except duckdb.Error as exc:
            damaged = unreadable_file(binding.files)
            if damaged is not None:
                return damaged
            raise DuckMeshError(
                "INTERNAL",
                f"cannot expose table {binding.name!r}: {self._scrubbed(exc)}",
                table=binding.name,
            ) from exc
        return None

    # -- execution ---------------------------------------------------------------

    def execute(
        self,
        sql: str,
        params: Sequence[object] | None,
        limits: QueryLimits,
        snapshot_id: int | None = None,
    ) -> QueryResult:
        """Run one sandboxed SELECT on a snapshot (the only one when not given)."""
        started = time.perf_counter()
        with self.running(sql, params, limits, snapshot_id, execute=False) as (cursor, referenced):
            columns, rows, truncated = json_result(
                cursor, sql, params, limits.row_limit, limits.max_result_bytes
            )
        return QueryResult(
            columns=columns,
            rows=rows,
            truncated=truncated,
            scanned_files=sum(len(binding.files) for binding in referenced),
            scanned_bytes=sum(binding.total_bytes for binding in referenced),
            duration_ms=(time.perf_counter() - started) * 1000.0,
        )

    @contextlib.contextmanager
    def running(
        self,
        sql: str,
        params: Sequence[object] | None,
        limits: QueryLimits,
        snapshot_id: int | None = None,
        *,
        execute: bool = True,
    ) -> Iterator[tuple[duckdb.DuckDBPyConnection, list[TableBinding]]]:
        """Check and start one sandboxed SELECT; yields its cursor (ready to
        fetch from) and the tables it reads; with ``execute=False`` the caller
        runs the (checked) statement itself, e.g. as an Arrow reader. Every
        result format goes through here: the checker, the deadline (armed
        until the block ends, so it covers fetching too) and the error mapping
        are the same for all."""
        if snapshot_id is None:
            if len(self._snapshots) != 1:
                raise ValueError("name the snapshot: this database holds several")
            snapshot_id = next(iter(self._snapshots))
        tables = self._snapshots.get(snapshot_id)
        if tables is None:
            raise SnapshotNotLoaded(snapshot_id)
        if params is not None:
            check_params(params)
        cursor, fresh = self._open_cursor(snapshot_id)
        referenced: list[TableBinding] = []
        reusable = False
        # Armed before parsing: checking, planning and fetching all run under
        # the deadline (the interrupt reaches every step DuckDB lets it reach;
        # ``_sqlcheck.precheck`` bounds the ones it does not).
        alarm = WATCHDOG.arm(limits.timeout_s, cursor.interrupt)
        try:
            # The session's schema selects the snapshot; user SQL cannot change
            # it (SET/USE are refused by the checker) nor name another schema.
            if fresh:
                cursor.execute(f"USE {self._schema(snapshot_id)}")
            analysis = analyze(cursor, sql, limits.max_sql_bytes)
            referenced = self._referenced(analysis, tables, self._damaged.get(snapshot_id, {}))
            if not execute:
                cursor.complete()  # the checker's own statement must end first
            elif params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, list(params))
            yield cursor, referenced
            reusable = True
        except duckdb.Error as exc:
            timed_out = alarm.disarm()
            raise map_error(
                exc,
                timed_out=timed_out,
                timeout_s=limits.timeout_s,
                memory_limit_mb=self._engine.memory_limit_mb,
                referenced=referenced,
                allowed_dir=self._allowed_dir,
                scrub=self._scrubbed,
            ) from exc
        except RecursionError:
            raise DuckMeshError(
                "SQL_REJECTED", "statement refused: it, or a value it returns, is nested too deeply"
            ) from None
        finally:
            # An interrupted cursor is not reused (its interrupt may be pending).
            reusable = not alarm.disarm() and reusable
            self._release(cursor, snapshot_id if reusable else None)

    def _referenced(
        self, analysis: SqlAnalysis, tables: dict[str, TableBinding], damaged: dict[str, str]
    ) -> list[TableBinding]:
        referenced: list[TableBinding] = []
        for name in sorted(analysis.table_names):
            binding = tables.get(name)
            if binding is not None and name in damaged and name not in analysis.cte_names:
                raise damaged_table(binding.name, damaged[name], self._allowed_dir)
            if binding is not None:
                referenced.append(binding)
            elif name not in analysis.cte_names:
                known = ", ".join(sorted(b.name for b in tables.values())[:50])
                raise DuckMeshError(
                    "SQL_ERROR",
                    f"table {name!r} does not exist in this snapshot"
                    + (f" (tables: {known})" if known else " (it has no tables)"),
                    table=name,
                )
        return referenced

    def _scrubbed(self, exc: BaseException) -> str:
        message = str(exc)
        for path in self._scrub:
            message = message.replace(path, "<data>")
        return message

    # -- cursors and lifecycle ---------------------------------------------------

    def _open_cursor(self, snapshot_id: int) -> tuple[duckdb.DuckDBPyConnection, bool]:
        """An idle cursor already in the snapshot's schema, or a fresh one (True)."""
        with self._lock:
            if self._closed:
                raise DuckMeshError("INTERNAL", "snapshot database is closed")
            idle = self._idle.get(snapshot_id)
            cursor = idle.pop() if idle else None
            fresh = cursor is None
            cursor = self._engine.cursor() if cursor is None else cursor
            self._active.add(cursor)
            return cursor, fresh

    def _release(self, cursor: duckdb.DuckDBPyConnection, snapshot_id: int | None) -> None:
        """Keep the cursor for the next query of ``snapshot_id`` or close it."""
        with self._lock:
            self._active.discard(cursor)
            idle = self._idle.setdefault(snapshot_id, []) if snapshot_id is not None else None
            keep = not self._closed and snapshot_id in self._snapshots
            if idle is not None and keep and len(idle) < _IDLE_CURSORS:
                idle.append(cursor)
            else:
                cursor.close()
            if self._closed and not self._active:
                self._dispose()

    def _dispose(self) -> None:
        """Release the catalog (and a private engine); no query is running."""
        for idle in self._idle.values():
            for cursor in idle:
                cursor.close()
        self._idle.clear()
        with contextlib.suppress(AttributeError):
            self._conn.close()
        if self._catalog:
            self._engine.detach(self._catalog)
        if self._owns_engine:
            self._engine.close()

    def interrupt(self) -> None:
        """Interrupt every query running on this database (they raise QUERY_TIMEOUT)."""
        with self._lock:
            for cursor in self._active:
                cursor.interrupt()

    def close(self) -> None:
        """Refuse new queries; release the database when the running ones end.

        Running queries are not interrupted (an evicted cache entry lets them
        finish); call ``interrupt()`` first to stop them too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._active:
                self._dispose()

    def function_catalog(self) -> set[tuple[str, str]]:
        """(name, kind) of every function this database exposes (for the allow-list test)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT function_name, function_type FROM duckdb_functions()"
            ).fetchall()
        return {(str(name), str(kind)) for name, kind in rows}

    def table_names(self, snapshot_id: int) -> tuple[str, ...]:
        return tuple(binding.name for binding in self._snapshots[snapshot_id].values())
