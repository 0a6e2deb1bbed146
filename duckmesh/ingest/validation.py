"""Validation of ingest requests against a table's current schema.

A request is checked whole before anything is written: every invalid record
is reported (index, field, reason) and a request with any error writes
nothing. Valid records become ``IngestRecord`` with canonical JSON (sorted
keys) and a hash of (op, event time, payload), which is what makes a retry
recognisable as the same logical write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from duckmesh.bus import IngestRecord
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, text_problem, validator
from duckmesh.errors import DuckMeshError
from duckmesh.ingest import record_columns
from duckmesh.ingest.envelope import (
    MAX_KEY_LENGTH,
    OPS,
    RECORD_KEYS,
    canonical_json,
    event_time,
    record_hash,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_LISTED_ERRORS",
    "OPS",
    "IngestOptions",
    "TableValidator",
    "parse_options",
    "validate_records",
]

MAX_LISTED_ERRORS = 100


@attrs.frozen
class IngestOptions:
    wait_for_visibility: bool
    visibility_timeout_ms: int | None


@attrs.frozen
class TableValidator:
    """Checks compiled once per table schema version."""

    table: TableDef
    checks: dict[str, tuple[bool, Callable[[Any], str | None]]]  # name -> (nullable, check)
    required: tuple[str, ...]
    key: tuple[str, ...]
    types: dict[str, ColumnType]

    @classmethod
    def for_table(cls, table: TableDef) -> TableValidator:
        types = {c.name: c.parsed for c in table.columns}
        checks = {c.name: (c.nullable, validator(types[c.name])) for c in table.columns}
        required = tuple(c.name for c in table.columns if not c.nullable)
        return cls(table, checks, required, table.primary_key, types)


def parse_options(body: dict[str, Any], max_timeout_ms: int) -> IngestOptions:
    wait = body.get("wait_for_visibility", False)
    if not isinstance(wait, bool):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            "wait_for_visibility must be true or false",
            field="wait_for_visibility",
        )
    timeout = body.get("visibility_timeout_ms")
    if timeout is not None and (type(timeout) is not int or not 0 <= timeout <= max_timeout_ms):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"visibility_timeout_ms must be an integer from 0 to {max_timeout_ms}",
            field="visibility_timeout_ms",
        )
    return IngestOptions(wait, timeout)


Bad = Callable[[int, str, str], None]  # (record index, field, reason)


def _envelope(
    tv: TableValidator, index: int, rec: Any, bad: Bad
) -> tuple[str, str, dict[str, Any], dt.datetime | None] | None:
    """A record's key, op, payload and event time, or None after reporting why not."""
    if type(rec) is not dict:
        bad(index, "", "a record must be an object")
        return None
    if not rec.keys() <= RECORD_KEYS:
        for k in sorted(rec.keys() - RECORD_KEYS):
            bad(index, k, "unknown record field")
        return None
    key = rec.get("idempotency_key")
    if type(key) is not str or not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
        bad(
            index,
            "idempotency_key",
            f"required: a string of 1..{MAX_KEY_LENGTH} characters without NUL",
        )
        return None
    if reason := text_problem(key):
        bad(index, "idempotency_key", reason)
        return None
    op = rec.get("op", "insert")
    if op not in OPS:
        bad(index, "op", "must be insert, upsert or delete")
        return None
    if op != "insert" and not tv.key:
        bad(index, "op", f"{op} needs a table with a primary key; {tv.table.name!r} has none")
        return None
    payload = rec.get("payload")
    if type(payload) is not dict:
        bad(index, "payload", "required: an object")
        return None
    when = None
    if rec.get("event_time") is not None:
        parsed = event_time(rec["event_time"])
        if isinstance(parsed, str):
            bad(index, "event_time", parsed)
            return None
        when = parsed
    return key, op, payload, when


def _payload_ok(tv: TableValidator, index: int, op: str, payload: dict[str, Any], bad: Bad) -> bool:
    """Check every column value and the required columns; report each problem."""
    ok = True
    for name, value in payload.items():
        spec = tv.checks.get(name)
        if spec is None:
            bad(index, f"payload.{name}", "unknown column")
            ok = False
            continue
        if value is None:
            if not spec[0]:
                bad(index, f"payload.{name}", "must not be null")
                ok = False
            continue
        reason = spec[1](value)
        if reason is not None:
            bad(index, f"payload.{name}", reason)
            ok = False
    needed = tv.key if op == "delete" else tv.required
    for name in needed:
        if payload.get(name) is None and name not in payload:
            bad(index, f"payload.{name}", "required column missing")
            ok = False
    return ok


def _check_count(raw_records: Any, max_records: int) -> None:
    if not isinstance(raw_records, list) or not raw_records:
        raise DuckMeshError(
            "VALIDATION_FAILED", "records must be a non-empty array", field="records"
        )
    if len(raw_records) > max_records:
        raise DuckMeshError(
            "PAYLOAD_TOO_LARGE", f"at most {max_records} records per request", limit=max_records
        )


def validate_records(
    tv: TableValidator, raw_records: Any, *, max_records: int, max_record_bytes: int
) -> Sequence[IngestRecord]:
    """Validate every record; raise one error listing all problems, or return them all.

    A request of a few records or more is first checked column by column
    (``record_columns``); when
    that finds anything wrong, or something it does not decide, the records
    are checked one by one, which names each problem (index, field, reason).
    """
    _check_count(raw_records, max_records)
    if len(raw_records) >= record_columns.MIN_RECORDS:
        columns = record_columns.validate_columns(tv, raw_records, max_record_bytes)
        if columns is not None:
            return columns
    return _validate_each(tv, raw_records, max_record_bytes)


def _validate_each(
    tv: TableValidator, raw_records: list[Any], max_record_bytes: int
) -> list[IngestRecord]:
    table = tv.table
    errors: list[dict[str, Any]] = []
    out: list[IngestRecord] = []
    too_large: list[int] = []
    first_use: dict[str, tuple[int, bytes]] = {}  # key -> (index, payload hash) of its first record
    conflict: tuple[int, int, str] | None = None

    def bad(index: int, field: str, reason: str) -> None:
        errors.append({"index": index, "field": field, "reason": reason})

    for index, rec in enumerate(raw_records):
        envelope = _envelope(tv, index, rec, bad)
        if envelope is None:
            continue
        key, op, payload, when = envelope
        if not _payload_ok(tv, index, op, payload, bad):
            continue
        text = canonical_json(payload)
        if len(text) > max_record_bytes:
            too_large.append(index)
            continue
        try:
            digest = record_hash(op, rec.get("event_time"), key, text)
        except UnicodeEncodeError:
            # JSON allows lone surrogates (\ud800); UTF-8 text cannot hold them.
            bad(index, "payload", "contains text that is not valid Unicode (a lone surrogate)")
            continue
        first = first_use.setdefault(key, (index, digest))
        if first[1] != digest and conflict is None:
            conflict = (first[0], index, key)
        out.append(
            IngestRecord(
                table_id=table.table_id,
                idempotency_key=key,
                op=op,
                payload=text,
                payload_hash=digest,
                event_time=when,
                schema_version=table.schema_version,
            )
        )
        if len(errors) >= MAX_LISTED_ERRORS:
            break
    if too_large:
        raise DuckMeshError(
            "PAYLOAD_TOO_LARGE",
            f"{len(too_large)} record(s) exceed {max_record_bytes} bytes",
            record_indexes=too_large[:MAX_LISTED_ERRORS],
            limit=max_record_bytes,
        )
    if errors:
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"{len(errors)} invalid record field(s); nothing was written",
            errors=errors[:MAX_LISTED_ERRORS],
        )
    if conflict is not None:
        raise _conflict_within(*conflict)
    return out


def _conflict_within(first_index: int, index: int, key: str) -> DuckMeshError:
    """Two records of one request share a key but not a payload: refused
    before the bus, so no token is named (none was ever committed)."""
    return DuckMeshError(
        "IDEMPOTENCY_CONFLICT",
        f"records {first_index} and {index} of this request use idempotency key {key!r}"
        " with different payloads; nothing was written",
        record_index=index,
        first_record_index=first_index,
        idempotency_key=key,
    )
