"""Vectorised validation of an upload against a table's current schema.

Every column is cast with Arrow to the table's type, then checked with Arrow
compute for what the record path also refuses (``ingest.validation`` and
``catalog.types``): nulls in non-nullable and key columns, NaN and infinity,
dates and timestamps outside 0001-01-01..9999-12-31 (UTC). Rows are looked
at one by one only to name the cells of a cast that failed (by bisection)
and for JSON columns, whose text must parse. Any error rejects the upload;
the first ``MAX_LISTED_ERRORS`` bad cells are listed (row, column, reason).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import attrs
import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, arrow_type, parse_type
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import MAX_KEY_LENGTH, MAX_LISTED_ERRORS, OPS

_ZONE = r"(Z|z|[+-]\d\d(:?\d\d)?)$"
_MIN_TS = dt.datetime(1, 1, 1)
_MAX_TS = dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
_MIN_DATE, _MAX_DATE = dt.date(1, 1, 1), dt.date(9999, 12, 31)
_TIME_KINDS = ("TIMESTAMP", "TIMESTAMPTZ")


@attrs.frozen
class UploadOptions:
    op: str = "insert"
    event_time_column: str | None = None
    key_column: str | None = None


@attrs.frozen
class Conformed:
    """The upload cast to the table's schema, with per-row keys if asked for."""

    data: pa.Table
    row_keys: list[str] | None
    row_hashes: list[str] | None


class _Errors:
    def __init__(self) -> None:
        self.cells: list[dict[str, Any]] = []

    def add(self, row: int | None, column: str, reason: str) -> None:
        self.cells.append({"row": row, "column": column, "reason": reason[:300]})

    @property
    def full(self) -> bool:
        return len(self.cells) >= MAX_LISTED_ERRORS

    def raise_if_any(self) -> None:
        if self.cells:
            cells = sorted(self.cells, key=lambda c: (c["row"] is not None, c["row"] or 0))
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"{len(cells)} invalid cell(s) or column(s) listed; nothing was written",
                errors=cells[:MAX_LISTED_ERRORS],
            )


def _cast_timestamp(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Text with and without a zone offset (naive means UTC, as for records)."""
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        return arr.cast(target)
    zoned = pc.match_substring_regex(arr, _ZONE)
    utc = pa.timestamp("us", tz="UTC")
    with_zone = pc.if_else(zoned, arr, None).cast(utc)
    without = pc.if_else(zoned, None, arr).cast(pa.timestamp("us")).cast(utc)
    return pc.coalesce(with_zone, without).cast(target)


def _caster(ctype: ColumnType) -> Callable[[pa.Array], pa.Array]:
    target = arrow_type(ctype)
    if ctype.kind in _TIME_KINDS:
        return lambda arr: _cast_timestamp(arr, target)
    return lambda arr: arr.cast(target, safe=True)


def _bad_cells(arr: pa.Array, cast: Callable[[pa.Array], pa.Array], budget: int) -> list[Any]:
    """(row, reason) of cells that fail ``cast`` on their own, found by bisection."""
    out: list[tuple[int, str]] = []

    def walk(part: pa.Array, offset: int) -> None:
        if len(out) >= budget or len(part) == 0:
            return
        try:
            cast(part)
            return
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            if len(part) == 1:
                out.append((offset, f"cannot be cast: {exc}"))
                return
        mid = len(part) // 2
        walk(part.slice(0, mid), offset)
        walk(part.slice(mid), offset + mid)

    walk(arr, 0)
    return out


def _rows(mask: pa.Array, budget: int) -> list[int]:
    """Indexes where ``mask`` is true (nulls count as false), at most ``budget``."""
    found = pc.indices_nonzero(pc.fill_null(mask, False))
    return [int(i) for i in found.slice(0, budget).to_pylist()]


def _range_mask(arr: pa.Array, ctype: ColumnType) -> tuple[pa.Array | None, str]:
    kind = ctype.kind
    if kind in ("FLOAT", "DOUBLE"):
        return pc.invert(pc.is_finite(arr)), f"not a finite number within the {kind} range"
    if kind == "DATE":
        low = pc.less(arr, pa.scalar(_MIN_DATE, pa.date32()))
        high = pc.greater(arr, pa.scalar(_MAX_DATE, pa.date32()))
        return pc.or_(low, high), "outside 0001-01-01..9999-12-31"
    if kind in _TIME_KINDS:
        naive = arr.cast(pa.timestamp("us")) if arr.type.tz else arr
        low = pc.less(naive, pa.scalar(_MIN_TS, pa.timestamp("us")))
        high = pc.greater(naive, pa.scalar(_MAX_TS, pa.timestamp("us")))
        return pc.or_(low, high), "outside 0001-01-01..9999-12-31 in UTC"
    return None, ""


def _check_json(arr: pa.Array, name: str, errors: _Errors) -> None:
    for row, text in enumerate(arr.to_pylist()):
        if errors.full:
            return
        if text is None:
            continue
        try:
            json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError:
            errors.add(row, name, "not a JSON text (NaN and Infinity are refused)")


def _conform_column(
    arr: pa.Array, name: str, ctype: ColumnType, not_null: bool, errors: _Errors
) -> pa.Array | None:
    cast = _caster(ctype)
    try:
        out = cast(arr)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        for row, reason in _bad_cells(arr, cast, MAX_LISTED_ERRORS - len(errors.cells)):
            errors.add(row, name, reason)
        return None
    if not_null and out.null_count:
        for row in _rows(out.is_null(), MAX_LISTED_ERRORS):
            errors.add(row, name, "must not be null")
    mask, reason = _range_mask(out, ctype)
    if mask is not None:
        for row in _rows(mask, MAX_LISTED_ERRORS):
            errors.add(row, name, reason)
    if ctype.kind == "JSON":
        _check_json(out, name, errors)
    return out


def _columns_problems(table: TableDef, raw: pa.Table, opts: UploadOptions, errors: _Errors) -> None:
    names = raw.schema.names
    known = {c.name for c in table.columns}
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.add(None, name, "column appears more than once")
    if opts.op not in OPS:
        errors.add(None, "op", "must be insert, upsert or delete")
    elif opts.op != "insert" and not table.primary_key:
        errors.add(None, "op", f"{opts.op} needs a table with a primary key")
    for name in names:
        if name not in known and name != opts.key_column:
            errors.add(None, name, "unknown column")
    needed = (
        table.primary_key
        if opts.op == "delete"
        else [c.name for c in table.columns if not c.nullable]
    )
    for name in needed:
        if name not in names:
            errors.add(None, name, "required column missing")
    if opts.key_column is not None and opts.key_column not in names:
        errors.add(None, opts.key_column, "key_column is not a column of the upload")
    etc = opts.event_time_column
    if etc is not None:
        col = next((c for c in table.columns if c.name == etc), None)
        if col is None or parse_type(col.type).kind not in _TIME_KINDS:
            errors.add(None, etc, "event_time_column must be a TIMESTAMP or TIMESTAMPTZ column")


def _row_keys(raw: pa.Table, name: str, errors: _Errors) -> list[str] | None:
    try:
        keys = pc.cast(raw.column(name).combine_chunks(), pa.string())
    except pa.ArrowException:
        errors.add(None, name, "key_column must hold text or integers")
        return None
    lengths = pc.utf8_length(keys)
    bad = pc.or_kleene(
        pc.is_null(keys), pc.or_(pc.less(lengths, 1), pc.greater(lengths, MAX_KEY_LENGTH))
    )
    for row in _rows(bad, MAX_LISTED_ERRORS):
        errors.add(row, name, f"an idempotency key must be 1..{MAX_KEY_LENGTH} characters")
    return [str(k) for k in keys.to_pylist()]


def row_hashes(data: pa.Table, op: str) -> list[str]:
    """MD5 (hex) of each row's op and values, computed by DuckDB over Arrow."""
    con = duckdb.connect()
    try:
        con.register("upload_rows", data)
        rows = con.execute(
            "SELECT md5(? || chr(0) || CAST(upload_rows AS VARCHAR)) FROM upload_rows", [op]
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def _dedupe_keys(conformed: Conformed) -> Conformed:
    """Drop repeats of a key within the upload (same row content); a key
    repeated with other content is a conflict."""
    assert conformed.row_keys is not None
    assert conformed.row_hashes is not None
    first: dict[str, tuple[int, str]] = {}
    keep: list[int] = []
    for i, (key, digest) in enumerate(zip(conformed.row_keys, conformed.row_hashes, strict=True)):
        prior = first.setdefault(key, (i, digest))
        if prior[0] == i:
            keep.append(i)
        elif prior[1] != digest:
            raise DuckMeshError(
                "IDEMPOTENCY_CONFLICT",
                f"rows {prior[0]} and {i} use idempotency key {key!r} with different content;"
                " nothing was written",
                row=i,
                first_row=prior[0],
                idempotency_key=key,
            )
    if len(keep) == len(conformed.row_keys):
        return conformed
    return Conformed(
        conformed.data.take(pa.array(keep, pa.int64())),
        [conformed.row_keys[i] for i in keep],
        [conformed.row_hashes[i] for i in keep],
    )


def conform(table: TableDef, raw: pa.Table, opts: UploadOptions) -> Conformed:
    """Cast and check ``raw`` against ``table``; raise listing every problem."""
    errors = _Errors()
    if raw.num_rows == 0:
        raise DuckMeshError("VALIDATION_FAILED", "the upload holds no rows")
    _columns_problems(table, raw, opts, errors)
    errors.raise_if_any()
    keys = _row_keys(raw, opts.key_column, errors) if opts.key_column else None
    required = set(table.primary_key)
    if opts.op != "delete":
        required |= {c.name for c in table.columns if not c.nullable}
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for col in table.columns:
        ctype = col.parsed
        fields.append(pa.field(col.name, arrow_type(ctype)))
        if col.name not in raw.schema.names:
            arrays.append(pa.nulls(raw.num_rows, arrow_type(ctype)))
            continue
        source = raw.column(col.name).combine_chunks()
        out = _conform_column(source, col.name, ctype, col.name in required, errors)
        arrays.append(out if out is not None else pa.nulls(raw.num_rows, arrow_type(ctype)))
    errors.raise_if_any()
    data = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    try:
        data.validate(full=True)  # e.g. text that is not UTF-8 in an IPC stream
    except pa.ArrowInvalid as exc:
        raise DuckMeshError(
            "VALIDATION_FAILED", f"the upload is not valid Arrow data: {exc}"
        ) from None
    if keys is None:
        return Conformed(data, None, None)
    return _dedupe_keys(Conformed(data, keys, row_hashes(data, opts.op)))
