"""One statement run once, streamed as Arrow record batches.

Why it exists: ``cursor.sql(text)`` builds a relation, which parses and binds
the statement to learn its columns, and ``relation.to_arrow_reader`` then
parses and binds it again to run it. Binding a statement over a snapshot's
view of 24 Parquet files costs 0.6 to 1.4 ms (measured in-process), so the
JSON and streamed result paths paid it twice per query
(docs/adr/0025-query-overhead.md). DuckDB's own ``to_arrow_reader`` on an
executed cursor is no substitute: it copies the whole remaining result first.

What it guarantees: ``open_stream`` runs the statement once, in DuckDB's
streaming mode (the same result ``relation.to_arrow_reader`` reads, so the
memory held is still one vector plus the batch being read); its column names
and DuckDB types are known before any row is read, so a caller can still
choose another path (and must ``close`` the stream then).
"""

from __future__ import annotations

from collections.abc import Sequence

import _duckdb
import duckdb
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

__all__ = ["ArrowStream", "open_stream"]


class ArrowStream:
    """A running statement's columns, and its rows as a record-batch reader."""

    __slots__ = ("_result", "names", "types")

    def __init__(self, result: _duckdb.RelationResult) -> None:
        self._result = result
        description = result.description
        self.names = [name for name, *_ in description]
        self.types: list[DuckDBPyType] = [duck_type for _, duck_type, *_ in description]

    def reader(self) -> pa.RecordBatchReader:
        """The rows (once); the reader holds the cursor until closed or read out."""
        return self._result.arrow_reader()

    def close(self) -> None:
        self._result.close()


def open_stream(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[object] | None,
    batch_rows: int,
) -> ArrowStream:
    """Run ``sql`` once on ``cursor`` (bound and planned once), streaming."""
    args = None if params is None else list(params)
    # The connection's own submit: what ``relation.to_arrow_reader`` runs,
    # without the relation's separate describe (a second parse and bind).
    return ArrowStream(cursor._submit(sql, args, "stream", batch_rows))
