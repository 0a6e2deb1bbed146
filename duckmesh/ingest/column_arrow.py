"""The Arrow rows of a request accepted column by column (ADR 0014).

The bus stores a flush of JSON records as Arrow batches of the table's
columns. It used to rebuild them from each record's canonical JSON text,
parsing every payload a second time; a request the column path accepted
already holds each column as one list of checked values, so its rows are
built here straight from those lists, and the records point at them
(``IngestRecord.arrow``). The values are the ones the text would give
(tests/ingest/test_column_arrow.py compares the two builds); a column type
not handled here returns None and the bus parses the text as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from duckmesh.bus.record_arrow import user_schema
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, converter

# Types pyarrow builds from the checked JSON values exactly as the bus's text
# parse does. FLOAT is not among them (a double rounded to float32 may differ
# from the text rounded once), nor JSON, LIST or STRUCT (key order, nesting).
_AS_IS = frozenset({"BOOLEAN", "SMALLINT", "INTEGER", "BIGINT", "DOUBLE", "VARCHAR"})
_CONVERTED = frozenset({"DATE", "DECIMAL"})
_TIMESTAMPS = frozenset({"TIMESTAMP", "TIMESTAMPTZ"})
_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, ArithmeticError)


def columns_to_arrow(
    table: TableDef, columns: Sequence[tuple[str, list[Any]]], n: int, missing: object
) -> pa.Table | None:
    """``table``'s rows from the checked ``columns`` (``missing`` where a
    payload lacks one), or None when a type or value is not handled here."""
    schema = user_schema(table)
    given = dict(columns)
    try:
        arrays = [
            _array(c.parsed, field.type, given.get(c.name), n, missing)
            for c, field in zip(table.columns, schema, strict=True)
        ]
    except _ERRORS:
        return None
    if any(a is None for a in arrays):
        return None
    return pa.Table.from_arrays(arrays, schema=schema)


def _array(
    ctype: ColumnType, atype: pa.DataType, values: list[Any] | None, n: int, missing: object
) -> pa.Array | None:
    if values is None:
        return pa.nulls(n, atype)
    if missing in values:
        values = [None if v is missing else v for v in values]
    kind = ctype.kind
    if kind in _AS_IS:
        return pa.array(values, atype)
    if kind in _TIMESTAMPS:
        try:
            # Arrow's ISO 8601 parser, the one its JSON reader uses.
            return pa.array(values, pa.string()).cast(atype)
        except _ERRORS:
            pass  # what it refuses, the bus converted in Python: so do we
    elif kind not in _CONVERTED:
        return None
    conv = converter(ctype)
    assert conv is not None
    return pa.array([None if v is None else conv(v) for v in values], atype)
