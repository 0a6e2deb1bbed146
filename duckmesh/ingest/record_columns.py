"""JSON records checked column by column: the fast path of ``validate_records``.

A request of many records is mostly valid and mostly uniform (the same
envelope fields, the same payload columns). Checked record by record it cost
~20 µs a record in Python: a function call per value, canonical JSON per
payload. Here each envelope field and each payload column is pulled out once
and checked whole with C-level builtins (the set of types present, min/max,
one ``isascii`` of the joined text, ``map`` of a parser or of the column
type's validator), and every payload's canonical JSON is assembled from
per-column encodings.

This path names no problem: on anything it does not accept — a bad value, a
missing required column, a key used twice, a record too large — it returns
None and the caller checks the records one by one, which gives the precise
error body (index, field, reason). What it accepts is exactly what the
one-by-one path accepts, as the same ``IngestRecord``s: same canonical text,
hash and event time (tests/ingest/test_record_columns.py compares the two).
They are handed over as columns (``RecordColumns``), which the bus reads
without an object per record.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from itertools import chain
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from duckmesh.bus import RecordColumns

# The ranges catalog.types' validators check value by value, checked here whole.
from duckmesh.catalog.types import (
    _FLOAT32_MAX,
    _FLOAT64_MAX,
    _INT_RANGES,
    ColumnType,
    text_problem,
)
from duckmesh.ingest.column_arrow import columns_to_arrow
from duckmesh.ingest.envelope import (
    MAX_KEY_LENGTH,
    OPS,
    RECORD_KEYS,
    canonical_json,
    event_time,
    record_hashes,
)

if TYPE_CHECKING:
    from duckmesh.ingest.validation import TableValidator

# Below this many records the fixed cost of the column checks (~15 µs)
# outweighs what they save (~3 µs a record): such requests go record by record.
MIN_RECORDS = 4
_MISSING: Any = object()  # a column a payload does not have (not the same as null)
_OPS = frozenset(OPS)
_FLOAT_MAX = {"FLOAT": _FLOAT32_MAX, "DOUBLE": _FLOAT64_MAX}
_BOOL_TEXT = {True: "true", False: "false"}
# Anything these raise means "not decided here": the records are checked one
# by one, which reports (or accepts) them exactly as before.
_UNDECIDED = (ValueError, TypeError, OverflowError, UnicodeError)


class _Unsure(ValueError):
    """Something this path does not decide."""


def validate_columns(
    tv: TableValidator, records: list[Any], max_record_bytes: int
) -> RecordColumns | None:
    """Every record, when the whole request is valid and decided here; else None."""
    try:
        return _validate(tv, records, max_record_bytes)
    except _UNDECIDED:
        return None


def _validate(tv: TableValidator, records: list[Any], max_record_bytes: int) -> RecordColumns:
    if set(map(type, records)) != {dict} or not RECORD_KEYS.issuperset(
        chain.from_iterable(records)
    ):
        raise _Unsure
    keys = [r.get("idempotency_key") for r in records]
    _check_keys(keys)
    ops = [r.get("op", "insert") for r in records]
    used_ops = set(ops)
    if not used_ops <= _OPS or (used_ops != {"insert"} and not tv.key):
        raise _Unsure
    payloads = [r.get("payload") for r in records]
    if set(map(type, payloads)) != {dict}:
        raise _Unsure
    raw_times = [r.get("event_time") for r in records]
    times = _event_times(raw_times)
    columns = _payload_columns(tv, payloads, ops)
    texts = _canonical_texts(columns, len(records))
    if max(map(len, texts)) > max_record_bytes:
        raise _Unsure
    hashes = record_hashes(ops, raw_times, keys, texts)
    rows = columns_to_arrow(tv.table, columns, len(records), _MISSING)
    table = tv.table
    return RecordColumns(
        table.table_id, table.schema_version, keys, ops, texts, hashes, times, rows
    )


def _check_keys(keys: list[Any]) -> None:
    """Strings of 1..MAX_KEY_LENGTH characters, no NUL, valid Unicode, each used once
    (a key used twice is a duplicate or a conflict: decided one by one)."""
    if set(map(type, keys)) != {str}:
        raise _Unsure
    lengths = list(map(len, keys))
    if min(lengths) < 1 or max(lengths) > MAX_KEY_LENGTH or len(set(keys)) != len(keys):
        raise _Unsure
    joined = "".join(keys)
    if "\x00" in joined or text_problem(joined):
        raise _Unsure


def _event_times(raw: list[Any]) -> list[dt.datetime | None]:
    if raw.count(None) == len(raw):
        return [None] * len(raw)
    out: list[dt.datetime | None] = []
    for value in raw:
        when = None if value is None else event_time(value)
        if isinstance(when, str):
            raise _Unsure
        out.append(when)
    return out


Column = tuple[str, list[Any]]  # (name, one value per record; _MISSING where absent)


def _payload_columns(tv: TableValidator, payloads: list[Any], ops: list[str]) -> list[Column]:
    """The payloads' columns in name order, each checked whole."""
    present = set(chain.from_iterable(payloads))
    if not present <= tv.checks.keys():
        raise _Unsure  # an unknown column
    needed = set(tv.required).union(tv.key if "delete" in ops else ())
    out: list[Column] = []
    for name in sorted(present | needed):
        values = [p.get(name, _MISSING) for p in payloads]
        nullable, check = tv.checks[name]
        missing, null = _MISSING in values, None in values
        if missing and name in needed:
            _check_required(tv, name, values, ops)
        if null and not nullable:
            raise _Unsure
        _check_values(tv.types[name], check, _given(values) if missing or null else values)
        if name in present:
            out.append((name, values))
    return out


def _given(values: list[Any]) -> list[Any]:
    return [v for v in values if v is not None and v is not _MISSING]


def _check_required(tv: TableValidator, name: str, values: list[Any], ops: list[str]) -> None:
    """A delete needs the key columns; an insert or upsert the non-nullable ones."""
    for value, op in zip(values, ops, strict=True):
        if value is _MISSING and name in (tv.key if op == "delete" else tv.required):
            raise _Unsure


def _check_values(ctype: ColumnType, check: Callable[[Any], str | None], values: list[Any]) -> None:
    """Raise unless every (non-null) value is valid for the column type."""
    if not values:
        return
    kind = ctype.kind
    types = set(map(type, values))
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        ok = types == {int} and lo <= min(values) and max(values) <= hi
    elif kind in _FLOAT_MAX:
        ok = (
            types <= {int, float}
            and (float not in types or all(map(math.isfinite, values)))
            and max(map(abs, values)) <= _FLOAT_MAX[kind]
        )
    elif kind == "BOOLEAN":
        ok = types == {bool}
    elif kind == "VARCHAR":
        ok = types == {str} and not text_problem("".join(values))
    elif kind in ("TIMESTAMP", "TIMESTAMPTZ"):
        # catalog.types' timestamp check: fromisoformat, and an instant with
        # an offset must exist in UTC (OverflowError: not decided here).
        ok = types == {str}
        for parsed in map(dt.datetime.fromisoformat, values) if ok else ():
            if parsed.tzinfo is not None:
                parsed.astimezone(dt.UTC)
    else:  # DATE, DECIMAL, JSON, lists, structs: the column type's own check
        ok = not any(map(check, values))
    if not ok:
        raise _Unsure


def _encoder(values: list[Any]) -> Callable[[Any], str]:
    """Canonical JSON of one of the (non-null) ``values``, as ``canonical_json``
    writes it inside a payload."""
    types = set(map(type, values))
    if types == {str}:
        return encode_basestring
    if types == {bool}:
        return _BOOL_TEXT.__getitem__
    if types <= {int, float} and (float not in types or all(map(math.isfinite, values))):
        return repr  # int.__repr__ / float.__repr__, as the encoder uses
    return canonical_json


def _canonical_texts(columns: list[Column], n: int) -> list[str]:
    """Each payload's canonical JSON (sorted keys, no spaces), from its columns."""
    if not columns:
        return ["{}"] * n
    parts: list[list[Any]] = []
    sparse = False
    for name, values in columns:
        prefix = encode_basestring(name) + ":"
        if _MISSING in values or None in values:
            sparse = sparse or _MISSING in values
            encode = _encoder(_given(values))
            parts.append(
                [
                    None if v is _MISSING else prefix + ("null" if v is None else encode(v))
                    for v in values
                ]
            )
        else:
            parts.append([prefix + text for text in map(_encoder(values), values)])
    rows = zip(*parts, strict=True)
    if sparse:
        return ["{" + ",".join([p for p in row if p is not None]) + "}" for row in rows]
    return ["{" + ",".join(row) + "}" for row in rows]
