"""Column types: parse DuckDB type names, check widening, validate JSON values.

The type grammar is the subset of DuckDB types a table may use (SPEC §9):
BOOLEAN, SMALLINT, INTEGER, BIGINT, FLOAT, DOUBLE, DECIMAL(p,s), VARCHAR,
DATE, TIMESTAMP, TIMESTAMPTZ, JSON, ``T[]`` lists and ``STRUCT(name T, ...)``.
Each parsed type renders back to one canonical DuckDB spelling, builds a
validator for ingest and a converter used when writing Parquet.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pyarrow as pa

_INT_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}
_ALIASES = {
    "INT": "INTEGER",
    "INT4": "INTEGER",
    "INT8": "BIGINT",
    "INT2": "SMALLINT",
    "LONG": "BIGINT",
    "BOOL": "BOOLEAN",
    "FLOAT8": "DOUBLE",
    "FLOAT4": "FLOAT",
    "REAL": "FLOAT",
    "STRING": "VARCHAR",
    "TEXT": "VARCHAR",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}
_SCALARS = {
    "BOOLEAN",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "FLOAT",
    "DOUBLE",
    "VARCHAR",
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "JSON",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # use with fullmatch
# Deepest LIST/STRUCT nesting of a column type (the parser recurses per level).
MAX_TYPE_DEPTH = 32
# Table-name prefixes of DuckDB's system catalogs; the query sandbox refuses
# bare names with these prefixes (duckmesh/query/_sqlcheck.py), so they are
# refused at create time too.
RESERVED_TABLE_PREFIXES = ("duckdb_", "pg_", "sqlite_", "pragma_", "information_schema")


class TypeError_(ValueError):
    """An unsupported or malformed type name."""


@attrs.frozen
class ColumnType:
    kind: str  # a scalar name, "DECIMAL", "LIST" or "STRUCT"
    precision: int = 0
    scale: int = 0
    element: ColumnType | None = None
    fields: tuple[tuple[str, ColumnType], ...] = ()

    def render(self) -> str:
        if self.kind == "DECIMAL":
            return f"DECIMAL({self.precision},{self.scale})"
        if self.kind == "LIST":
            assert self.element is not None
            return f"{self.element.render()}[]"
        if self.kind == "STRUCT":
            # Field names are always quoted: ``order`` or ``from`` are common field
            # names and reserved words in DuckDB, where an unquoted one breaks a CAST.
            inner = ", ".join(f'"{name}" {t.render()}' for name, t in self.fields)
            return f"STRUCT({inner})"
        return self.kind


def is_identifier(name: str) -> bool:
    # fullmatch: ``$`` in a plain match also accepts a trailing newline ("orders\n").
    return bool(_IDENT.fullmatch(name)) and not name.lower().startswith("_dm_")


def is_reserved_table_name(name: str) -> bool:
    """Whether a bare table name would resolve to one of DuckDB's system
    catalogs (``pg_class``, ``duckdb_tables``, ...) in a query, so the SQL
    sandbox refuses it and a table of that name could never be read."""
    return name.lower().startswith(RESERVED_TABLE_PREFIXES)


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_type(text: str, _depth: int = 1) -> ColumnType:
    """Parse a DuckDB type name; raises TypeError_ with the offending text."""
    if _depth > MAX_TYPE_DEPTH:
        raise TypeError_(f"LIST/STRUCT types nest at most {MAX_TYPE_DEPTH} levels deep")
    raw = " ".join(text.strip().split())
    upper = raw.upper()
    if not raw:
        raise TypeError_("empty type")
    if upper.endswith("[]"):
        return ColumnType("LIST", element=parse_type(raw[:-2], _depth + 1))
    if upper.startswith("LIST(") and upper.endswith(")"):
        return ColumnType("LIST", element=parse_type(raw[5:-1], _depth + 1))
    if upper.startswith("STRUCT(") and upper.endswith(")"):
        fields = []
        for part in _split_top(raw[7:-1]):
            name, _, type_text = part.partition(" ")
            if len(name) > 2 and name[0] == name[-1] == '"':
                name = name[1:-1]
            if not _IDENT.fullmatch(name) or not type_text:
                raise TypeError_(f"bad STRUCT field {part!r}")
            fields.append((name, parse_type(type_text, _depth + 1)))
        # DuckDB compares field names case-insensitively ("a" and "A" collide).
        if not fields or len({n.lower() for n, _ in fields}) != len(fields):
            raise TypeError_(f"STRUCT needs distinct fields: {raw!r}")
        return ColumnType("STRUCT", fields=tuple(fields))
    match = re.fullmatch(r"(DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", upper)
    if match:
        p, s = int(match.group(2)), int(match.group(3))
        if not 1 <= p <= 38 or s > p:
            raise TypeError_(f"DECIMAL precision 1..38 and scale <= precision: {raw!r}")
        return ColumnType("DECIMAL", precision=p, scale=s)
    name = _ALIASES.get(upper, upper)
    if name in _SCALARS:
        return ColumnType(name)
    raise TypeError_(f"unsupported type {raw!r}")


_WIDER = {
    "SMALLINT": {"INTEGER", "BIGINT", "DOUBLE"},
    "INTEGER": {"BIGINT", "DOUBLE"},
    "BIGINT": set(),
    "FLOAT": {"DOUBLE"},
}


def can_widen(old: ColumnType, new: ColumnType) -> bool:
    """True when every value of ``old`` is exactly a value of ``new``."""
    if old == new:
        return True
    if old.kind == "DECIMAL" and new.kind == "DECIMAL":
        return new.scale >= old.scale and (new.precision - new.scale) >= (old.precision - old.scale)
    if old.kind in _WIDER:
        return new.kind in _WIDER[old.kind]
    return False


# --- ingest validation -------------------------------------------------------

Validator = Callable[[Any], str | None]  # returns a reason, or None when valid

_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT64_MAX = sys.float_info.max


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _decimal_converter(t: ColumnType) -> Callable[[Any], decimal.Decimal]:
    """JSON number or numeric string -> Decimal rounded to the scale of ``t``.

    The context carries enough digits for any DECIMAL(38, s): the default
    context (28 digits) raises on larger values that do fit the column.
    """
    q = decimal.Decimal(1).scaleb(-t.scale)
    context = decimal.Context(
        prec=t.precision + 2,
        rounding=decimal.ROUND_HALF_EVEN,
        Emax=decimal.MAX_EMAX,
        Emin=decimal.MIN_EMIN,
    )
    return lambda v: decimal.Decimal(str(v)).quantize(q, context=context)


def _parse_datetime(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def text_problem(v: str) -> str | None:
    """Why a string cannot be stored as UTF-8 (Postgres, Parquet), or None."""
    if v.isascii():
        return None
    try:
        v.encode()
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def _json_problem(v: Any) -> str | None:
    """Why a JSON value cannot be stored and read back as JSON, or None."""
    stack = [v]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float and not math.isfinite(item):
            return f"{item!r} is not a finite number"
        if kind is str:
            if reason := text_problem(item):
                return reason
        elif kind is list:
            stack.extend(item)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return None


def _int_validator(t: ColumnType) -> Validator:
    kind = t.kind
    lo, hi = _INT_RANGES[kind]

    def check_int(v: Any) -> str | None:
        if type(v) is not int:
            return f"expected {kind} (an integer)"
        if not lo <= v <= hi:
            return f"{_short(v)} is outside the {kind} range"
        return None

    return check_int


def _float_validator(t: ColumnType) -> Validator:
    kind = t.kind
    top = _FLOAT32_MAX if kind == "FLOAT" else _FLOAT64_MAX

    def check_float(v: Any) -> str | None:
        if type(v) not in (int, float):
            return f"expected {kind} (a number)"
        # A finite number too large for the type would become infinity (or,
        # for a huge JSON integer, fail at commit after the write was accepted).
        if type(v) is int:
            if abs(v) > top:
                return f"{_short(v)} is outside the {kind} range"
        elif not math.isfinite(v):
            # JSON has no NaN or Infinity, and a NaN would never read back equal.
            return f"{v!r} is not a finite number"
        elif abs(v) > top:
            return f"{v!r} is outside the {kind} range"
        return None

    return check_float


def _boolean_validator(t: ColumnType) -> Validator:
    return lambda v: None if type(v) is bool else "expected BOOLEAN (true or false)"


def _varchar_validator(t: ColumnType) -> Validator:
    return lambda v: text_problem(v) if type(v) is str else "expected VARCHAR (a string)"


def _json_validator(t: ColumnType) -> Validator:
    return _json_problem


def _decimal_validator(t: ColumnType) -> Validator:
    limit = decimal.Decimal(10) ** (t.precision - t.scale)
    to_decimal = _decimal_converter(t)

    def check_decimal(v: Any) -> str | None:
        if type(v) not in (int, float, str):
            return f"expected {t.render()} (a number or numeric string)"
        try:
            d = decimal.Decimal(str(v))
        except decimal.InvalidOperation:
            return f"{_short(v)} is not a decimal number"
        # Checked after rounding to the scale, as it will be stored: 99.999
        # does not fit DECIMAL(4,2) because it rounds to 100.00.
        # copy_abs, not abs(): abs() rounds to the context's 28 digits.
        if not d.is_finite() or d.copy_abs() >= limit or to_decimal(v).copy_abs() >= limit:
            return f"{_short(v)} does not fit {t.render()}"
        return None

    return check_decimal


def _date_validator(t: ColumnType) -> Validator:
    def check_date(v: Any) -> str | None:
        if type(v) is not str:
            return "expected DATE (an ISO 8601 string)"
        try:
            dt.date.fromisoformat(v)
        except ValueError:
            return f"{v!r} is not an ISO 8601 date"
        return None

    return check_date


def _timestamp_validator(t: ColumnType) -> Validator:
    kind = t.kind
    to_utc = _to_timestamp if kind == "TIMESTAMP" else _to_timestamptz

    def check_ts(v: Any) -> str | None:
        if type(v) is not str:
            return f"expected {kind} (an ISO 8601 string)"
        try:
            _parse_datetime(v)
        except ValueError:
            return f"{v!r} is not an ISO 8601 timestamp"
        try:
            to_utc(v)  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        except OverflowError:
            return f"{v!r} is outside the {kind} range"
        return None

    return check_ts


def _list_validator(t: ColumnType) -> Validator:
    assert t.element is not None
    inner = validator(t.element)

    def check_list(v: Any) -> str | None:
        if type(v) is not list:
            return f"expected {t.render()} (an array)"
        for i, item in enumerate(v):
            if item is not None and (reason := inner(item)):
                return f"[{i}]: {reason}"
        return None

    return check_list


def _struct_validator(t: ColumnType) -> Validator:
    fields = {name: validator(ft) for name, ft in t.fields}

    def check_struct(v: Any) -> str | None:
        if type(v) is not dict:
            return f"expected {t.render()} (an object)"
        for key, item in v.items():
            check = fields.get(key)
            if check is None:
                return f"unknown field {key!r}"
            if item is not None and (reason := check(item)):
                return f".{key}: {reason}"
        return None

    return check_struct


# One validator builder per type family, by ``ColumnType.kind``.
_VALIDATORS: dict[str, Callable[[ColumnType], Validator]] = {
    **dict.fromkeys(_INT_RANGES, _int_validator),
    "FLOAT": _float_validator,
    "DOUBLE": _float_validator,
    "BOOLEAN": _boolean_validator,
    "VARCHAR": _varchar_validator,
    "JSON": _json_validator,
    "DECIMAL": _decimal_validator,
    "DATE": _date_validator,
    "TIMESTAMP": _timestamp_validator,
    "TIMESTAMPTZ": _timestamp_validator,
    "LIST": _list_validator,
    "STRUCT": _struct_validator,
}


def validator(t: ColumnType) -> Validator:
    """A fast check for one JSON value of type ``t`` (None is checked elsewhere)."""
    build = _VALIDATORS.get(t.kind)
    if build is None:
        raise AssertionError(t.kind)
    return build(t)


# --- Parquet conversion ------------------------------------------------------

Converter = Callable[[Any], Any]


def arrow_type(t: ColumnType) -> pa.DataType:
    kind = t.kind
    simple: dict[str, pa.DataType] = {
        "BOOLEAN": pa.bool_(),
        "SMALLINT": pa.int16(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(),
        "JSON": pa.string(),
        "DATE": pa.date32(),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    }
    if kind in simple:
        return simple[kind]
    if kind == "DECIMAL":
        return pa.decimal128(t.precision, t.scale)
    if kind == "LIST":
        assert t.element is not None
        return pa.list_(arrow_type(t.element))
    assert kind == "STRUCT"
    return pa.struct([(name, arrow_type(ft)) for name, ft in t.fields])


def _to_timestamp(v: str) -> dt.datetime:
    value = _parse_datetime(v)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _to_timestamptz(v: str) -> dt.datetime:
    value = _parse_datetime(v)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def converter(t: ColumnType) -> Converter | None:
    """A function from validated JSON value to a pyarrow-ready value, or None
    when the JSON value is already acceptable as is."""
    kind = t.kind
    if kind == "DATE":
        return dt.date.fromisoformat
    if kind == "TIMESTAMP":
        return _to_timestamp
    if kind == "TIMESTAMPTZ":
        return _to_timestamptz
    if kind == "DECIMAL":
        return _decimal_converter(t)
    if kind in ("FLOAT", "DOUBLE"):
        return float
    if kind == "JSON":
        return lambda v: json.dumps(v, separators=(",", ":"))
    if kind == "LIST":
        assert t.element is not None
        inner = converter(t.element)
        if inner is None:
            return None
        conv = inner
        return lambda v: [None if x is None else conv(x) for x in v]
    if kind == "STRUCT":
        convs = {name: converter(ft) for name, ft in t.fields}
        if all(c is None for c in convs.values()):
            return None

        def convert_struct(v: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for key, item in v.items():
                c = convs[key]
                out[key] = item if item is None or c is None else c(item)
            return out

        return convert_struct
    return None
