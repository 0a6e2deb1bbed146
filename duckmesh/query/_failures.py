"""What a DuckDB failure means to the client, and damage kept to one table.

Why it exists: a damaged or unreadable Parquet file must hurt only the table
it belongs to. ``unreadable_file`` finds the file whose footer cannot be read
when a table's view cannot be created (that table is then left out of the
snapshot's schema and answers ``DATA_FILE_CORRUPT`` when queried, while every
other table keeps working); ``map_error`` turns a failure at query time that
names one of the queried tables' files into the same error, and every other
DuckDB failure into the stable error codes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from duckmesh.errors import DuckMeshError

__all__ = ["damaged_table", "map_error", "unreadable_file"]


class _Bound(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def files(self) -> tuple[str, ...]: ...


def unreadable_file(files: Iterable[str]) -> str | None:
    """The first file whose Parquet footer cannot be read, if any."""
    for path in files:
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException):
            return path
    return None


def damaged_table(table: str, path: str, allowed_dir: str, detail: str = "") -> DuckMeshError:
    """DATA_FILE_CORRUPT for ``table``, naming the file by its object key."""
    key = os.path.relpath(path, os.path.dirname(allowed_dir.rstrip(os.sep)))
    return DuckMeshError(
        "DATA_FILE_CORRUPT",
        f"table {table!r} cannot be read: its data file {key!r} is damaged or unreadable"
        + (f" ({detail})" if detail else "")
        + "; other tables are not affected (see the integrity check and repair runbook)",
        table=table,
        file=key,
    )


def map_error(
    exc: duckdb.Error,
    *,
    timed_out: bool,
    timeout_s: float,
    memory_limit_mb: int,
    referenced: Sequence[_Bound],
    allowed_dir: str,
    scrub: Callable[[BaseException], str],
) -> DuckMeshError:
    if timed_out:
        return DuckMeshError(
            "QUERY_TIMEOUT",
            f"query exceeded the time limit of {timeout_s:g} s and was stopped",
            timeout_s=timeout_s,
        )
    if isinstance(exc, duckdb.InterruptException):
        return DuckMeshError("QUERY_TIMEOUT", "query was cancelled", reason="cancelled")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return DuckMeshError(
            "QUERY_MEMORY_EXCEEDED",
            f"query exceeded the memory limit of {memory_limit_mb} MB "
            "(reduce the data it sorts, groups or joins, or add filters)",
            memory_limit_mb=memory_limit_mb,
        )
    text = str(exc)
    for binding in referenced:
        for path in binding.files:
            if path in text:  # DuckDB names the file it could not read
                return damaged_table(binding.name, path, allowed_dir, scrub(exc))
    message = scrub(exc)
    if isinstance(exc, duckdb.PermissionException):
        return DuckMeshError("SQL_REJECTED", f"statement refused by the sandbox: {message}")
    if isinstance(exc, (duckdb.InternalException, duckdb.FatalException, duckdb.IOException)):
        return DuckMeshError("INTERNAL", f"query engine failure: {message}")
    return DuckMeshError("SQL_ERROR", message)
