"""The query plane: snapshot resolution, visibility barrier, sandboxed execution.

A query is answered from exactly one published snapshot of one tenant: the
snapshot is resolved (and, for read-after-write, waited for through the
visibility barrier), then the tenant's SQL runs in a private, locked-down
in-memory DuckDB database that exposes only that snapshot's tables
(``sandbox.SnapshotDatabase``).
"""

from duckmesh.query.sandbox import (
    ColumnSpec,
    QueryLimits,
    QueryResult,
    SnapshotDatabase,
    TableBinding,
    check_sql,
)

__all__ = [
    "ColumnSpec",
    "QueryLimits",
    "QueryResult",
    "SnapshotDatabase",
    "TableBinding",
    "check_sql",
]
