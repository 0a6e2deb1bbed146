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
* The database is configured before any tenant SQL runs and then sealed, in
  this order (DuckDB refuses ``allowed_directories`` once external access is
  off, and refuses every SET once the configuration is locked): memory limit,
  threads, no temporary directory (no spilling: memory overruns fail fast and
  nothing is written), UTC time zone, no Python replacement scans, no extension
  auto-install/auto-load, no community extensions, Parquet metadata cache,
  ``allowed_directories = [tenant data dir]``, ``enable_external_access =
  false``, ``lock_configuration = true``.
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
from duckmesh.query._json_result import json_result
from duckmesh.query._sqlcheck import (
    DEFAULT_MAX_SQL_BYTES,
    MAX_EXPRESSION_DEPTH,
    SqlAnalysis,
    analyze,
    check_params,
    check_sql,
)
from duckmesh.query._watchdog import WATCHDOG
from duckmesh.storage import layout
from duckmesh.storage.layout import SYSTEM_COLUMN_PREFIX, quote_ident, quote_literal

__all__ = [
    "ColumnSpec",
    "QueryLimits",
    "QueryResult",
    "SnapshotDatabase",
    "TableBinding",
    "check_sql",
]

_GLOB_CHARACTERS = frozenset("*?[]{}")


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


def _validate_binding(binding: TableBinding, allowed_dir: str) -> None:
    where = f"table binding {binding.name!r}"
    if not binding.name or "\x00" in binding.name:
        raise ValueError(f"{where}: invalid table name")
    if not binding.columns:
        raise ValueError(f"{where}: a table needs at least one column")
    names = [column.name.lower() for column in binding.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate column names")
    for column in binding.columns:
        if not column.name or column.name.lower().startswith(SYSTEM_COLUMN_PREFIX):
            raise ValueError(f"{where}: invalid column name {column.name!r}")
        if not column.type.strip() or any(ch in column.type for ch in ";\x00"):
            raise ValueError(f"{where}: invalid type {column.type!r}")
    missing = [key for key in binding.primary_key if key.lower() not in names]
    if missing:
        raise ValueError(f"{where}: primary key columns {missing} are not columns")
    present = {name.lower() for name in binding.file_columns}
    if binding.files and any(key.lower() not in present for key in binding.primary_key):
        raise ValueError(f"{where}: primary key columns must be present in the files")
    root = allowed_dir.rstrip(os.sep) + os.sep
    for path in binding.files:
        if not os.path.isabs(path) or not os.path.abspath(path).startswith(root):
            raise ValueError(f"{where}: file {path!r} is not under the data dir")
        if any(ch in path for ch in _GLOB_CHARACTERS):
            raise ValueError(f"{where}: file path contains glob characters")


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
    ) -> None:
        self._allowed_dir = os.path.abspath(allowed_dir)
        self._scrub = sorted(
            {self._allowed_dir, os.path.realpath(self._allowed_dir)}, key=len, reverse=True
        )
        # snapshot id -> lower-case table name -> binding; each snapshot's views
        # live in their own schema, so one warm DuckDB instance (and its Parquet
        # metadata cache) serves every snapshot of the tenant.
        self._snapshots: dict[int, dict[str, TableBinding]] = {}
        self._memory_limit_mb = limits.memory_limit_mb
        self._lock = threading.Lock()
        self._active: set[duckdb.DuckDBPyConnection] = set()
        self._closed = False
        self._conn = duckdb.connect(":memory:")
        try:
            self._configure(limits)
            if bindings is not None:
                self.add_snapshot(snapshot_id, bindings)
        except BaseException:
            self._conn.close()
            raise

    @staticmethod
    def _schema(snapshot_id: int) -> str:
        return f"snap_{int(snapshot_id)}"

    def add_snapshot(self, snapshot_id: int, bindings: Sequence[TableBinding]) -> None:
        """Expose one snapshot: a schema holding one view per table binding."""
        tables: dict[str, TableBinding] = {}
        for binding in bindings:
            _validate_binding(binding, self._allowed_dir)
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
            try:
                for binding in tables.values():
                    self._create_view(schema, binding)
            except BaseException:
                self._conn.execute(f"DROP SCHEMA {schema} CASCADE")
                raise
            self._snapshots[snapshot_id] = tables

    def has_snapshot(self, snapshot_id: int) -> bool:
        return snapshot_id in self._snapshots

    def snapshot_ids(self) -> list[int]:
        return list(self._snapshots)

    def drop_snapshot(self, snapshot_id: int) -> None:
        """Forget a snapshot; queries already running on it finish normally."""
        with self._lock:
            if self._snapshots.pop(snapshot_id, None) is not None and not self._closed:
                self._conn.execute(f"DROP SCHEMA {self._schema(snapshot_id)} CASCADE")

    # -- setup -----------------------------------------------------------------

    def _configure(self, limits: QueryLimits) -> None:
        if limits.memory_limit_mb <= 0 or limits.threads <= 0:
            raise ValueError("memory_limit_mb and threads must be positive")
        allowed = quote_literal(self._allowed_dir.rstrip(os.sep) + os.sep)
        for statement in (
            f"SET memory_limit = '{int(limits.memory_limit_mb)}MB'",
            f"SET threads = {int(limits.threads)}",
            # No spilling: memory overruns fail fast, deterministically, and
            # nothing is ever written to disk (the default is ./.tmp).
            "SET temp_directory = ''",
            "SET TimeZone = 'UTC'",
            "SET python_enable_replacements = false",
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET allow_community_extensions = false",
            "SET parquet_metadata_cache = true",
            f"SET max_expression_depth = {MAX_EXPRESSION_DEPTH}",
            # Must precede enable_external_access = false (DuckDB refuses it after).
            f"SET allowed_directories = [{allowed}]",
            "SET enable_external_access = false",
            # Last: from here on no SET is accepted, by anyone.
            "SET lock_configuration = true",
        ):
            self._conn.execute(statement)

    def _create_view(self, schema: str, binding: TableBinding) -> None:
        sql = f"CREATE VIEW {schema}.{quote_ident(binding.name)} AS {view_query(binding)}"
        statements = self._conn.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.CREATE:
            raise ValueError(f"table binding {binding.name!r} does not form a single view")
        try:
            self._conn.execute(sql)
        except duckdb.Error as exc:
            raise DuckMeshError(
                "INTERNAL",
                f"cannot expose table {binding.name!r}: {self._scrubbed(exc)}",
                table=binding.name,
            ) from exc

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
        cursor = self._open_cursor()
        # Armed before parsing: checking, planning and fetching all run under
        # the deadline (the interrupt reaches every step DuckDB lets it reach;
        # ``_sqlcheck.precheck`` bounds the ones it does not).
        alarm = WATCHDOG.arm(limits.timeout_s, cursor.interrupt)
        try:
            # The session's schema selects the snapshot; user SQL cannot change
            # it (SET/USE are refused by the checker) nor name another schema.
            cursor.execute(f"USE {self._schema(snapshot_id)}")
            analysis = analyze(cursor, sql, limits.max_sql_bytes)
            referenced = self._referenced(analysis, tables)
            if not execute:
                cursor.complete()  # the checker's own statement must end first
            elif params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, list(params))
            yield cursor, referenced
        except duckdb.Error as exc:
            timed_out = alarm.disarm()
            raise self._map_error(exc, timed_out=timed_out, limits=limits) from exc
        except RecursionError:
            raise DuckMeshError(
                "SQL_REJECTED", "statement refused: it, or a value it returns, is nested too deeply"
            ) from None
        finally:
            alarm.disarm()
            self._release(cursor)

    def _referenced(
        self, analysis: SqlAnalysis, tables: dict[str, TableBinding]
    ) -> list[TableBinding]:
        referenced: list[TableBinding] = []
        for name in sorted(analysis.table_names):
            binding = tables.get(name)
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

    def _map_error(
        self, exc: duckdb.Error, *, timed_out: bool, limits: QueryLimits
    ) -> DuckMeshError:
        if timed_out:
            return DuckMeshError(
                "QUERY_TIMEOUT",
                f"query exceeded the time limit of {limits.timeout_s:g} s and was stopped",
                timeout_s=limits.timeout_s,
            )
        if isinstance(exc, duckdb.InterruptException):
            return DuckMeshError("QUERY_TIMEOUT", "query was cancelled", reason="cancelled")
        if isinstance(exc, duckdb.OutOfMemoryException):
            return DuckMeshError(
                "QUERY_MEMORY_EXCEEDED",
                f"query exceeded the memory limit of {self._memory_limit_mb} MB "
                "(reduce the data it sorts, groups or joins, or add filters)",
                memory_limit_mb=self._memory_limit_mb,
            )
        message = self._scrubbed(exc)
        if isinstance(exc, duckdb.PermissionException):
            return DuckMeshError("SQL_REJECTED", f"statement refused by the sandbox: {message}")
        if isinstance(exc, (duckdb.InternalException, duckdb.FatalException, duckdb.IOException)):
            return DuckMeshError("INTERNAL", f"query engine failure: {message}")
        return DuckMeshError("SQL_ERROR", message)

    def _scrubbed(self, exc: BaseException) -> str:
        message = str(exc)
        for path in self._scrub:
            message = message.replace(path, "<data>")
        return message

    # -- cursors and lifecycle ---------------------------------------------------

    def _open_cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._closed:
                raise DuckMeshError("INTERNAL", "snapshot database is closed")
            cursor = self._conn.cursor()
            self._active.add(cursor)
            return cursor

    def _release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            self._active.discard(cursor)
            cursor.close()
            if self._closed and not self._active:
                self._conn.close()

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
                self._conn.close()

    def function_catalog(self) -> set[tuple[str, str]]:
        """(name, kind) of every function this database exposes (for the allow-list test)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT function_name, function_type FROM duckdb_functions()"
            ).fetchall()
        return {(str(name), str(kind)) for name, kind in rows}

    def table_names(self, snapshot_id: int) -> tuple[str, ...]:
        return tuple(binding.name for binding in self._snapshots[snapshot_id].values())
