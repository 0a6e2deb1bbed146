"""The DuckDB instance that tenant databases live in.

Why it exists: a DuckDB instance costs about 4 MB of memory and, by default,
``threads - 1`` worker threads plus 8 I/O threads before it holds any data
(its built-in catalog and thread pools). One instance per tenant made a
process with 1,000 tenants need 4 GB and 9,000 threads; one instance shared by
every tenant of a process costs that once, and each tenant database in it is
an attached in-memory catalog of about 10 KB (docs/adr/0018-shared-query-engine.md).

What it guarantees: the instance is configured and sealed before any tenant
SQL runs, in this order (DuckDB refuses ``allowed_directories`` once external
access is off, and every SET once the configuration is locked): memory limit,
threads, no temporary directory (no spilling: memory overruns fail fast and
nothing is written), UTC time zone, no Python replacement scans, no extension
auto-install/auto-load, no community extensions, Parquet metadata cache,
``allowed_directories = [data root]``, ``enable_external_access = false``,
``lock_configuration = true``. ``attach`` hands out catalogs with opaque names
(``t_1``, ``t_2``...: even an error message naming one reveals no tenant).
"""

from __future__ import annotations

import itertools
import os
import threading

import duckdb

from duckmesh.query._sqlcheck import MAX_EXPRESSION_DEPTH
from duckmesh.storage.layout import quote_literal

__all__ = ["QueryEngine"]

# DuckDB's asynchronous I/O threads (default 8 per instance): local Parquet
# reads do not use them; one keeps remote reads working if an extension does.
ASYNC_THREADS = 1


class QueryEngine:
    """One sealed in-memory DuckDB instance; tenant databases are catalogs in it."""

    def __init__(self, allowed_dir: str, *, memory_limit_mb: int, threads: int) -> None:
        if memory_limit_mb <= 0 or threads <= 0:
            raise ValueError("memory_limit_mb and threads must be positive")
        self.allowed_dir = os.path.abspath(allowed_dir)
        self.memory_limit_mb = memory_limit_mb
        self.threads = threads
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self._catalogs: set[str] = set()
        self._closed = False
        self.conn = duckdb.connect(":memory:", config={"threads": threads})
        try:
            self._configure()
        except BaseException:
            self.conn.close()
            raise

    def _configure(self) -> None:
        allowed = quote_literal(self.allowed_dir.rstrip(os.sep) + os.sep)
        for statement in (
            f"SET memory_limit = '{int(self.memory_limit_mb)}MB'",
            f"SET threads = {int(self.threads)}",
            f"SET async_threads = {ASYNC_THREADS}",
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
            self.conn.execute(statement)

    @property
    def databases(self) -> int:
        """Tenant catalogs attached now."""
        return len(self._catalogs)

    def attach(self) -> str:
        """A new empty in-memory catalog; returns its (opaque) name."""
        with self._lock:
            if self._closed:
                raise RuntimeError("query engine is closed")
            name = f"t_{next(self._names)}"
            self.conn.execute(f"ATTACH ':memory:' AS {name}")
            self._catalogs.add(name)
            return name

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the instance (its own session, e.g. ``USE``)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("query engine is closed")
            return self.conn.cursor()

    def detach(self, name: str) -> None:
        """Drop a catalog (no query may be running on it)."""
        with self._lock:
            if name in self._catalogs:
                self._catalogs.discard(name)
                if not self._closed:
                    self.conn.execute(f"DETACH {name}")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.conn.close()
