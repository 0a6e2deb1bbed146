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
Python (an infinite or BC date) is answered through DuckDB's own Python
values (``fetchmany``), which runs the statement a second time; statements
that are slow to bind (``_slow_to_bind``) take that path at once.
The Arrow path runs the statement once (``_arrow_stream``).
The values then go through the same ``_convert`` plans as ever.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import duckdb
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from duckmesh.query._arrow_stream import open_stream
from duckmesh.query._convert import ROW_OVERHEAD, column_plan, convert_column, row_size

__all__ = ["ARROW_BATCH_ROWS", "NotArrowSafe", "arrow_safe", "json_result", "rows_from_arrow"]

ARROW_BATCH_ROWS = 256
# Rows are converted in chunks of about this many bytes (or rows), so that
# the Python objects of one chunk stay small even when every row is large;
# the native path's first fetch is small because nothing is known yet.
CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_ROWS = 8192
FIRST_FETCH_ROWS = 64
# A result the Arrow path cannot convert is run again natively: a second bind,
# which costs nothing for ordinary statements but seconds for one with
# thousands of expressions, many joins, or a parameter holding a huge list
# (converted holding the GIL): statements longer than this, or with list or
# struct parameters, take the native path at once (one bind whatever the types).
ARROW_MAX_SQL_CHARS = 8 * 1024
# ... and so do statements naming more than this many sources (FROM and JOIN
# keywords): join ordering would be planned twice too.
ARROW_MAX_SOURCES = 8
_SOURCES = re.compile(r"\b(?:from|join)\b", re.IGNORECASE)
MAX_ARROW_DEPTH = 16
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


def arrow_safe(duck_type: DuckDBPyType, depth: int = 0) -> bool:
    """Whether Arrow hands every value of ``duck_type`` to Python as DuckDB would
    (Arrow's schema import refuses deep nesting: those go native too)."""
    kind = duck_type.id
    if kind in ("list", "array", "struct"):
        children = [t for _, t in duck_type.children if isinstance(t, DuckDBPyType)]
        return (
            depth < MAX_ARROW_DEPTH
            and bool(children)
            and all(arrow_safe(t, depth + 1) for t in children)
        )
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


def _slow_to_bind(sql: str, args: list[object] | None) -> bool:
    """Whether binding ``sql`` twice would cost noticeably (see ARROW_MAX_SQL_CHARS)."""
    if len(sql) > ARROW_MAX_SQL_CHARS:
        return True
    if any(isinstance(p, (list, tuple, dict)) for p in args or ()):
        return True
    return len(_SOURCES.findall(sql)) > ARROW_MAX_SOURCES


def json_result(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Sequence[object] | None,
    row_limit: int,
    max_bytes: int,
) -> tuple[tuple[tuple[str, str], ...], list[list[object]], bool]:
    """The result as JSON-ready rows: from small Arrow batches when every
    column's type converts alike there (bounded memory, ``_json_result``),
    else (or when a value does not) through DuckDB's own Python values."""
    args = None if params is None else list(params)
    if _slow_to_bind(sql, args):  # bind it once, natively
        cursor.execute(sql, args)
        return _native_rows(cursor, row_limit, max_bytes)
    stream = open_stream(cursor, sql, args, ARROW_BATCH_ROWS)
    types = stream.types
    if not (types and all(arrow_safe(t) for t in types)):
        stream.close()
    else:
        columns = tuple((n, str(t)) for n, t in zip(stream.names, types, strict=True))
        reader = stream.reader()
        try:
            rows, truncated = rows_from_arrow(reader, types, row_limit, max_bytes)
            return columns, rows, truncated
        except (NotArrowSafe, pa.ArrowException):
            # An infinite date, or the Arrow stream failed (its errors are not
            # DuckDB's: an interrupt arrives as ArrowInvalid): run it again the
            # native way, which reports what DuckDB says (QUERY_TIMEOUT, ...).
            pass
        finally:
            reader.close()
    cursor.execute(sql, args)
    return _native_rows(cursor, row_limit, max_bytes)


def _native_rows(
    cursor: duckdb.DuckDBPyConnection, row_limit: int, max_bytes: int
) -> tuple[tuple[tuple[str, str], ...], list[list[object]], bool]:
    description = cursor.description or []
    columns = tuple((name, str(duck_type)) for name, duck_type, *_ in description)
    plans = [column_plan(duck_type) for _, duck_type, *_ in description]
    converters = [(i, plan.convert) for i, plan in enumerate(plans) if plan.convert]
    wanted = max(row_limit, 0) + 1
    budget = max_bytes
    rows: list[list[object]] = []
    size = 0
    truncated = False
    chunk = FIRST_FETCH_ROWS
    while len(rows) < wanted:
        batch = cursor.fetchmany(min(wanted - len(rows), chunk))
        if not batch:
            break
        if not plans:
            rows.extend([] for _ in batch)
            chunk = CHUNK_ROWS
            continue
        values: list[Sequence[Any]] = list(zip(*batch, strict=True))
        del batch
        for index, convert in converters:
            values[index] = convert_column(values[index], convert)
        batch_rows: list[list[object]] = list(map(list, zip(*values, strict=True)))
        batch_size = ROW_OVERHEAD * len(batch_rows) + sum(
            plan.size(column) for plan, column in zip(plans, values, strict=True)
        )
        if size + batch_size > budget:
            # Over budget somewhere in this chunk: keep whole rows that fit.
            truncated = True
            for row in batch_rows:
                size += row_size(row)
                if size > budget:
                    break
                rows.append(row)
            break
        rows.extend(batch_rows)
        size += batch_size
        per_row = max(1, batch_size // len(batch_rows))
        chunk = max(1, min(CHUNK_ROWS, CHUNK_BYTES // per_row))
    if len(rows) > row_limit:
        del rows[max(row_limit, 0) :]
        truncated = True
    return columns, rows, truncated
