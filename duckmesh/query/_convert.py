"""Turn DuckDB result values into JSON-ready Python values, one column at a time.

Why it exists: query results leave the service as JSON, and DuckDB's Python
client returns ``Decimal``, ``datetime``, ``bytes``, ``UUID``, tuples for
ARRAY, NaN floats and so on. Converting every cell would make the query path
much slower than DuckDB itself, so the plan is decided once per result from the
column types and only columns that need it are touched.

What it guarantees, for every value produced:

* int, str, bool, None, float (finite only: NaN and +/-inf become None), and
  lists / str-keyed dicts of those;
* DECIMAL -> exact decimal string (never exponent notation);
* DATE, TIME -> ISO 8601; TIMESTAMP -> ISO 8601 without zone;
  TIMESTAMPTZ -> ISO 8601 in UTC with a trailing ``Z``;
* INTERVAL -> ISO 8601 duration (``P1DT2H``); BLOB -> base64; UUID -> str;
* JSON -> the parsed JSON value; MAP -> dict with string keys.

It also estimates the size of the JSON a column of values will take, cheaply
(fixed widths where possible), so that results can be truncated by size.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import attrs
from duckdb.sqltypes import DuckDBPyType

Converter = Callable[[Any], Any]
Sizer = Callable[[Sequence[Any]], int]

# Approximate JSON width of fixed-size values, including the separator.
_FIXED_WIDTHS: dict[str, int] = {
    "null": 5,
    "boolean": 6,
    "tinyint": 5,
    "utinyint": 4,
    "smallint": 7,
    "usmallint": 6,
    "integer": 12,
    "uinteger": 11,
    "bigint": 21,
    "ubigint": 21,
    "hugeint": 41,
    "uhugeint": 40,
    "float": 16,
    "double": 25,
}
# Brackets around a row and the separator after it.
ROW_OVERHEAD = 4
_STRING_IDS = frozenset({"varchar", "enum", "bit", "bignum"})
_FLOAT_IDS = frozenset({"float", "double"})
_DATE_TIME_IDS = frozenset({"date", "time", "time_ns", "time with time zone"})
_TIMESTAMP_IDS = frozenset({"timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns"})
_BINARY_IDS = frozenset({"blob", "geometry"})


@attrs.frozen
class ColumnPlan:
    """How to convert and measure one result column."""

    convert: Converter | None  # applied to non-NULL values; None means "leave as is"
    size: Sizer


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _decimal(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _iso(value: Any) -> str:
    # DuckDB hands out dates outside Python's range (BC) as strings already.
    return value.isoformat() if isinstance(value, (date, time)) else str(value)


def _utc_iso(value: Any) -> str:
    if isinstance(value, datetime):
        text = value.isoformat()
        if text.endswith("+00:00"):  # the sandbox runs in UTC: the usual case
            return text[:-6] + "Z"
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return f"{value.isoformat()}Z"
    return str(value)


def _base64(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def iso_duration(value: timedelta) -> str:
    """ISO 8601 duration of a timedelta, e.g. ``P1DT2H3M4.5S`` or ``-PT3S``."""
    total = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if total < 0 else ""
    days, rest = divmod(abs(total), 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if micros:
        clock += f"{seconds}.{micros:06d}".rstrip("0") + "S"
    elif seconds:
        clock += f"{seconds}S"
    text = "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")
    return sign + (text if text != "P" else "PT0S")


def _interval(value: Any) -> str:
    return iso_duration(value) if isinstance(value, timedelta) else str(value)


def _json_key(key: Any) -> str:
    return key if isinstance(key, str) else json.dumps(jsonify(key))


def jsonify(value: Any) -> Any:
    """Convert any value DuckDB returns by its Python type (fallback path)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return _utc_iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _base64(value)
    if isinstance(value, (list, tuple)):
        return [jsonify(item) for item in value]
    if isinstance(value, dict):
        return {_json_key(key): jsonify(item) for key, item in value.items()}
    return str(value)


def _apply(convert: Converter | None, value: Any) -> Any:
    if value is None or convert is None:
        return value
    return convert(value)


def _list_converter(child: Converter | None, *, always: bool) -> Converter | None:
    if child is None:
        return list if always else None
    return lambda value: [None if item is None else child(item) for item in value]


def _struct_converter(fields: dict[str, Converter | None]) -> Converter | None:
    if all(convert is None for convert in fields.values()):
        return None
    return lambda value: {key: _apply(fields.get(key), item) for key, item in value.items()}


def _map_converter(key: Converter | None, item: Converter | None) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            return jsonify(value)
        return {_json_key(_apply(key, k)): _apply(item, v) for k, v in value.items()}

    return convert


def _child_types(duck_type: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    return [(name, t) for name, t in duck_type.children if isinstance(t, DuckDBPyType)]


def value_converter(duck_type: DuckDBPyType) -> Converter | None:
    """The converter for non-NULL values of ``duck_type``; None when none is needed."""
    kind = duck_type.id
    if str(duck_type) == "JSON":
        return json.loads
    if kind in _STRING_IDS or (kind in _FIXED_WIDTHS and kind not in _FLOAT_IDS):
        return None
    if kind in _FLOAT_IDS:
        return _finite
    if kind == "decimal":
        return _decimal
    if kind in _DATE_TIME_IDS or kind in _TIMESTAMP_IDS:
        return _iso
    if kind == "timestamp with time zone":
        return _utc_iso
    if kind in _BINARY_IDS:
        return _base64
    if kind == "uuid":
        return str
    if kind == "interval":
        return _interval
    if kind in ("list", "array"):
        children = _child_types(duck_type)
        child = value_converter(children[0][1]) if children else jsonify
        return _list_converter(child, always=kind == "array")
    if kind == "struct":
        return _struct_converter({name: value_converter(t) for name, t in _child_types(duck_type)})
    if kind == "map":
        named = dict(_child_types(duck_type))
        key_type, item_type = named.get("key"), named.get("value")
        return _map_converter(
            value_converter(key_type) if key_type is not None else jsonify,
            value_converter(item_type) if item_type is not None else jsonify,
        )
    # union, variant and anything newer: decide by the Python value.
    return jsonify


def _fixed_size(width: int) -> Sizer:
    return lambda values: width * len(values)


def _string_size(values: Sequence[Any]) -> int:
    # Quotes and the separator: 4 characters a value beyond the text itself.
    return sum(len(value) for value in values if value is not None) + 4 * len(values)


def _json_size(values: Sequence[Any]) -> int:
    return len(json.dumps(values, default=str, ensure_ascii=False))


def column_plan(duck_type: DuckDBPyType) -> ColumnPlan:
    """How to convert and measure a column of ``duck_type``."""
    convert = value_converter(duck_type)
    kind = duck_type.id
    if kind in _FIXED_WIDTHS:
        size = _fixed_size(_FIXED_WIDTHS[kind])
    elif str(duck_type) == "JSON" or kind in ("list", "array", "struct", "map"):
        size = _json_size
    elif convert is not jsonify:
        size = _string_size
    else:
        size = _json_size
    return ColumnPlan(convert=convert, size=size)


def convert_column(values: Sequence[Any], convert: Converter) -> list[Any]:
    return [None if value is None else convert(value) for value in values]


def row_size(row: Sequence[Any]) -> int:
    """Approximate JSON size of one already-converted row, with its separator."""
    return len(json.dumps(row, default=str, ensure_ascii=False)) + ROW_OVERHEAD - 2
