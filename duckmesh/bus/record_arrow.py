"""JSON payloads of a table's records as Arrow columns of its schema.

Used when a group of validated records is stored as a batch (ADR 0014) and
for records still held as JSON in ``bus_record`` (written before that, or
that could not be converted). All payloads go through Arrow's JSON reader at
once (C++, no GIL) when the table's types allow it; otherwise, or when that
fails, payload by payload in Python, which names what cannot convert.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, arrow_type, converter, parse_type

_FAST_KINDS = frozenset(
    {
        "BOOLEAN",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "FLOAT",
        "DOUBLE",
        "VARCHAR",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "LIST",
        "STRUCT",
    }
)


def _fast_path_ok(t: ColumnType) -> bool:
    """Types Arrow's JSON reader parses exactly as our converters would."""
    if t.kind not in _FAST_KINDS:
        return False
    if t.element is not None and not _fast_path_ok(t.element):
        return False
    return all(_fast_path_ok(ft) for _, ft in t.fields)


def user_schema(table: TableDef) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(parse_type(c.type))) for c in table.columns])


def _row_converter(table: TableDef) -> Any:
    """payload dict -> list of column values ready for pyarrow."""
    plan = [(c.name, converter(parse_type(c.type))) for c in table.columns]

    def convert(payload: dict[str, Any]) -> list[Any]:
        values = []
        for name, conv in plan:
            value = payload.get(name)
            if value is not None and conv is not None:
                value = conv(value)
            values.append(value)
        return values

    return convert


def _read_fast(table: TableDef, payloads: Sequence[str]) -> pa.Table | None:
    """All payloads at once through Arrow's JSON reader, or None when the
    table has a type it does not handle or any payload fails."""
    schema = user_schema(table)
    if not all(_fast_path_ok(parse_type(c.type)) for c in table.columns):
        return None
    data = "\n".join(payloads).encode()
    try:
        result = pa_json.read_json(
            io.BytesIO(data),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if result.num_rows != len(payloads):
        return None
    return result.select(schema.names).cast(schema)


_ARROW_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError)


def _read_slow(
    table: TableDef, payloads: Sequence[str]
) -> tuple[pa.Table | None, list[int], list[tuple[int, str]]]:
    """Payload by payload in Python; finds and names what cannot convert."""
    schema = user_schema(table)
    convert = _row_converter(table)
    kept: list[int] = []
    rows: list[list[Any]] = []
    rejected: list[tuple[int, str]] = []
    for i, payload in enumerate(payloads):
        try:
            values = convert(json.loads(payload))
        except (ValueError, TypeError, ArithmeticError, pa.ArrowException) as exc:
            rejected.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        kept.append(i)
        rows.append(values)

    def arrays(batch: list[list[Any]]) -> list[pa.Array]:
        return [pa.array([v[i] for v in batch], f.type) for i, f in enumerate(schema)]

    try:
        return (pa.Table.from_arrays(arrays(rows), schema=schema) if rows else None), kept, rejected
    except _ARROW_ERRORS:
        pass
    good_rows, good = [], []
    for i, values in zip(kept, rows, strict=True):
        try:
            arrays([values])
        except _ARROW_ERRORS as exc:
            rejected.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        good.append(i)
        good_rows.append(values)
    if not good:
        return None, [], sorted(rejected)
    return pa.Table.from_arrays(arrays(good_rows), schema=schema), good, sorted(rejected)


def payloads_to_arrow(
    table: TableDef, payloads: Sequence[str]
) -> tuple[pa.Table | None, list[int], list[tuple[int, str]]]:
    """The payloads as ``table``'s columns: (rows, indexes of the payloads
    they hold, (index, reason) of those that cannot convert)."""
    fast = _read_fast(table, payloads)
    if fast is not None:
        return fast, list(range(len(payloads))), []
    return _read_slow(table, payloads)
