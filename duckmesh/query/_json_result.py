"""JSON result rows built from small Arrow batches, so memory stays bounded.

Why it exists: DuckDB's Python ``fetchmany`` converts whole 2048-row vectors
to Python objects and keeps more vectors in flight, so a result of large
values (8,192 rows of 100 kB strings) grew the server by over a gigabyte
before the 64 MiB JSON cut was even reached. Reading the result as Arrow
batches of ``ARROW_BATCH_ROWS`` rows holds one DuckDB vector plus the rows
kept so far; batches are gathered into chunks of about ``CHUNK_BYTES`` (or
``CHUNK_ROWS``) before conversion, so narrow results convert as fast as
before.

Arrow's Python values equal DuckDB's for the types in ``_ARROW_SAFE``
(and lists, arrays and structs of them); a result with any other type
(HUGEINT, INTERVAL, MAP, UNION, ENUM, ...) or a value Arrow cannot hand to
Python (an infinite or BC date) is answered by the caller's native path.
The values then go through the same ``_convert`` plans as ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from duckmesh.query._convert import ROW_OVERHEAD, column_plan, convert_column, row_size

__all__ = ["ARROW_BATCH_ROWS", "NotArrowSafe", "arrow_safe", "rows_from_arrow"]

ARROW_BATCH_ROWS = 256
CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_ROWS = 8192
_ARROW_SAFE = frozenset(
    {
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "float",
        "double",
        "decimal",
        "varchar",
        "blob",
        "uuid",
        "date",
        "time",
        "timestamp",
        "timestamp_s",
        "timestamp_ms",
        "timestamp with time zone",
        "null",
    }
)


class NotArrowSafe(Exception):
    """A value Arrow cannot convert like DuckDB does: use the native path."""


def arrow_safe(duck_type: DuckDBPyType) -> bool:
    """Whether Arrow hands every value of ``duck_type`` to Python as DuckDB would."""
    kind = duck_type.id
    if kind in ("list", "array", "struct"):
        children = [t for _, t in duck_type.children if isinstance(t, DuckDBPyType)]
        return bool(children) and all(arrow_safe(t) for t in children)
    return kind in _ARROW_SAFE or str(duck_type) == "JSON"


def rows_from_arrow(
    batches: Iterable[pa.RecordBatch],
    duck_types: Sequence[DuckDBPyType],
    row_limit: int,
    max_bytes: int,
) -> tuple[list[list[Any]], bool]:
    """JSON-ready rows of ``batches`` (at least one column): at most
    ``row_limit`` rows and about ``max_bytes`` of JSON (whole rows); True
    when either cut rows."""
    plans = [column_plan(t) for t in duck_types]
    wanted = max(row_limit, 0) + 1
    rows: list[list[Any]] = []
    size = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = pending_bytes = 0

    def convert() -> bool:
        """Convert the pending batches; True when the size budget is spent."""
        nonlocal size, pending, pending_rows, pending_bytes
        table = pa.Table.from_batches(pending)
        pending, pending_rows, pending_bytes = [], 0, 0
        try:
            values = [column.to_pylist() for column in table.columns]
        except (OverflowError, ValueError, pa.ArrowException) as exc:
            raise NotArrowSafe(str(exc)) from None
        del table
        for i, plan in enumerate(plans):
            if plan.convert is not None:
                values[i] = convert_column(values[i], plan.convert)
        chunk = [list(row) for row in zip(*values, strict=True)]
        chunk_size = ROW_OVERHEAD * len(chunk) + sum(
            plan.size(column) for plan, column in zip(plans, values, strict=True)
        )
        del values
        if size + chunk_size <= max_bytes:
            rows.extend(chunk)
            size += chunk_size
            return False
        for row in chunk:  # over budget in this chunk: keep the whole rows that fit
            size += row_size(row)
            if size > max_bytes:
                return True
            rows.append(row)
        return True  # pragma: no cover - the estimate said it would not fit

    over = False
    for batch in batches:
        take = min(batch.num_rows, wanted - len(rows) - pending_rows)
        if take <= 0:
            break
        pending.append(batch.slice(0, take) if take < batch.num_rows else batch)
        pending_rows += take
        pending_bytes += batch.nbytes
        if pending_bytes >= CHUNK_BYTES or pending_rows >= CHUNK_ROWS:
            over = convert()
            if over:
                break
        if len(rows) + pending_rows >= wanted:
            break
    if pending and not over:
        over = convert()
    truncated = over or len(rows) > row_limit
    del rows[max(row_limit, 0) :]
    return rows, truncated
