"""Turning bus records into Parquet files.

``build_tables`` applies op semantics and types: append-only tables keep
every record; keyed tables keep the newest record per key within the batch
(deletes stay as tombstones so older files' rows are hidden at read time and
compaction agrees). Every row carries ``_dm_token`` and ``_dm_op``. A record
whose payload cannot be converted is returned as rejected with the reason,
never dropped silently. The file layout itself (system columns, schema,
writing) is ``duckmesh.storage.layout``'s.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.json as pa_json

from duckmesh.bus import BusRecord
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import ColumnType, arrow_type, converter, parse_type
from duckmesh.storage.layout import with_system_columns

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@attrs.frozen
class Rejected:
    token: int
    table_id: str
    reason: str


@attrs.frozen
class PartitionRows:
    """Rows of one table and one event-time partition, ready to write."""

    table: TableDef
    partition: str  # "date=YYYY-MM-DD/hour=HH" or "date=YYYY-MM-DD"
    arrow: pa.Table
    min_token: int
    max_token: int
    min_event_time: dt.datetime | None
    max_event_time: dt.datetime | None


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


def _partition_seconds(table: TableDef) -> int:
    return 86400 if (table.partition_by or {}).get("event_time") == "day" else 3600


def _partition_name(bucket: int, seconds: int) -> str:
    when = dt.datetime.fromtimestamp(bucket * seconds, dt.UTC)
    if seconds == 86400:
        return f"date={when:%Y-%m-%d}"
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def _user_schema(table: TableDef) -> pa.Schema:
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


def _read_fast(table: TableDef, records: Sequence[BusRecord]) -> pa.Table | None:
    """All payloads at once through Arrow's JSON reader (C++, no GIL), or None
    when the table has a type it does not handle or any payload fails."""
    schema = _user_schema(table)
    if not all(_fast_path_ok(parse_type(c.type)) for c in table.columns):
        return None
    data = "\n".join(r.payload for r in records).encode()
    try:
        result = pa_json.read_json(
            io.BytesIO(data),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if result.num_rows != len(records):
        return None
    return result.select(schema.names).cast(schema)


def _read_slow(
    table: TableDef, records: Sequence[BusRecord]
) -> tuple[pa.Table | None, list[BusRecord], list[Rejected]]:
    """Record by record in Python; finds and sets aside what cannot convert."""
    schema = _user_schema(table)
    convert = _row_converter(table)
    kept: list[BusRecord] = []
    rows: list[list[Any]] = []
    rejected: list[Rejected] = []
    for rec in records:
        try:
            values = convert(json.loads(rec.payload))
        except (ValueError, TypeError, ArithmeticError, pa.ArrowException) as exc:
            rejected.append(Rejected(rec.token, rec.table_id, f"{type(exc).__name__}: {exc}"))
            continue
        kept.append(rec)
        rows.append(values)

    def arrays(batch: list[list[Any]]) -> list[pa.Array]:
        return [pa.array([v[i] for v in batch], f.type) for i, f in enumerate(schema)]

    try:
        return (pa.Table.from_arrays(arrays(rows), schema=schema) if rows else None), kept, rejected
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    good_rows, good = [], []
    for rec, values in zip(kept, rows, strict=True):
        try:
            arrays([values])
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            rejected.append(Rejected(rec.token, rec.table_id, f"{type(exc).__name__}: {exc}"))
            continue
        good.append(rec)
        good_rows.append(values)
    if not good:
        return None, [], rejected
    return pa.Table.from_arrays(arrays(good_rows), schema=schema), good, rejected


def build_tables(
    table: TableDef, records: Sequence[BusRecord]
) -> tuple[list[PartitionRows], list[Rejected]]:
    """Apply op semantics and types to one table's records (in token order)."""
    user = _read_fast(table, records)
    kept: Sequence[BusRecord] = records
    rejected: list[Rejected] = []
    if user is None:
        user, kept, rejected = _read_slow(table, records)
        if user is None:
            return [], rejected
    full = with_system_columns(user, [r.token for r in kept], [r.op for r in kept])
    indices = list(range(len(kept)))
    if table.primary_key:
        # Newest record per key within the batch (records are in token order).
        keys = zip(*(full.column(k).to_pylist() for k in table.primary_key), strict=True)
        latest = {key: i for i, key in enumerate(keys)}
        indices = sorted(latest.values())
    seconds = _partition_seconds(table)
    width = dt.timedelta(seconds=seconds)
    buckets: dict[int, list[int]] = {}
    for i in indices:
        rec = kept[i]
        when = rec.event_time or rec.ingested_at
        # Exact: a float timestamp() rounds 9999-12-31T23:59:59.999999 up to year 10000.
        buckets.setdefault((when - _EPOCH) // width, []).append(i)
    out: list[PartitionRows] = []
    for bucket, rows in sorted(buckets.items()):
        part = full.take(pa.array(rows, pa.int64()))
        times = [t for t in (kept[i].event_time for i in rows) if t is not None]
        out.append(
            PartitionRows(
                table=table,
                partition=_partition_name(bucket, seconds),
                arrow=part,
                min_token=kept[rows[0]].token,
                max_token=kept[rows[-1]].token,
                min_event_time=min(times) if times else None,
                max_event_time=max(times) if times else None,
            )
        )
    return out, rejected
