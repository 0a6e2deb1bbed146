"""Turning bus records into Parquet files.

``build_tables`` applies op semantics and types: append-only tables keep
every record; keyed tables keep the newest record per key within the batch
(deletes stay as tombstones so older files' rows are hidden at read time and
compaction agrees). Every row carries ``_dm_token`` and ``_dm_op``. A record
whose payload cannot be converted is returned as rejected with the reason,
never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from duckmesh.bus import BusRecord
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import arrow_type, converter, parse_type

TOKEN_COLUMN = "_dm_token"  # noqa: S105 (a column name, not a secret)
OP_COLUMN = "_dm_op"


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


def _partition_of(table: TableDef, when: dt.datetime) -> str:
    granularity = (table.partition_by or {}).get("event_time", "hour")
    when = when.astimezone(dt.UTC)
    if granularity == "day":
        return f"date={when:%Y-%m-%d}"
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def _schema(table: TableDef) -> pa.Schema:
    fields = [pa.field(c.name, arrow_type(parse_type(c.type))) for c in table.columns]
    fields.append(pa.field(TOKEN_COLUMN, pa.int64(), nullable=False))
    fields.append(pa.field(OP_COLUMN, pa.string(), nullable=False))
    return pa.schema(fields)


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


def build_tables(
    table: TableDef, records: Sequence[BusRecord]
) -> tuple[list[PartitionRows], list[Rejected]]:
    """Apply op semantics and types to one table's records (in token order)."""
    rejected: list[Rejected] = []
    rows: dict[Any, tuple[BusRecord, list[Any]]] = {}
    key_index = [i for i, c in enumerate(table.columns) if c.name in table.primary_key]
    convert = _row_converter(table)
    for n, rec in enumerate(records):
        try:
            values = convert(json.loads(rec.payload))
        except (ValueError, TypeError, ArithmeticError) as exc:
            rejected.append(Rejected(rec.token, rec.table_id, f"{type(exc).__name__}: {exc}"))
            continue
        key: Any = tuple(values[i] for i in key_index) if key_index else n
        rows[key] = (rec, values)  # later tokens overwrite earlier ones per key
    by_partition: dict[str, list[tuple[BusRecord, list[Any]]]] = {}
    for rec, values in rows.values():
        when = rec.event_time or rec.ingested_at
        by_partition.setdefault(_partition_of(table, when), []).append((rec, values))
    schema = _schema(table)
    out: list[PartitionRows] = []
    for partition, items in sorted(by_partition.items()):
        items.sort(key=lambda item: item[0].token)
        arrow, bad = _to_arrow(schema, table, items)
        rejected.extend(bad)
        if arrow is None:
            continue
        kept = [rec for rec, _ in items if rec.token not in {b.token for b in bad}]
        times = [r.event_time for r in kept if r.event_time is not None]
        out.append(
            PartitionRows(
                table=table,
                partition=partition,
                arrow=arrow,
                min_token=kept[0].token,
                max_token=kept[-1].token,
                min_event_time=min(times) if times else None,
                max_event_time=max(times) if times else None,
            )
        )
    return out, rejected


def _to_arrow(
    schema: pa.Schema, table: TableDef, items: list[tuple[BusRecord, list[Any]]]
) -> tuple[pa.Table | None, list[Rejected]]:
    def arrays(batch: list[tuple[BusRecord, list[Any]]]) -> list[pa.Array]:
        cols: list[pa.Array] = []
        for i, field in enumerate(schema):
            if field.name == TOKEN_COLUMN:
                cols.append(pa.array([r.token for r, _ in batch], pa.int64()))
            elif field.name == OP_COLUMN:
                cols.append(pa.array([r.op for r, _ in batch], pa.string()))
            else:
                cols.append(pa.array([v[i] for _, v in batch], field.type))
        return cols

    try:
        return pa.Table.from_arrays(arrays(items), schema=schema), []
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        pass
    # Find the records that cannot be converted, keep the rest.
    good: list[tuple[BusRecord, list[Any]]] = []
    bad: list[Rejected] = []
    for item in items:
        try:
            arrays([item])
            good.append(item)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            bad.append(Rejected(item[0].token, table.table_id, f"{type(exc).__name__}: {exc}"))
    if not good:
        return None, bad
    return pa.Table.from_arrays(arrays(good), schema=schema), bad


def write_parquet(arrow: pa.Table, path: Path) -> tuple[int, str]:
    """Write zstd-compressed Parquet with statistics; returns (size, sha256)."""
    pq.write_table(arrow, path, compression="zstd", write_statistics=True)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()
