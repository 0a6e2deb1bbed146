"""Turning an upload batch into Parquet rows, as Arrow all the way (ADR 0013).

The rows were cast to the table's schema at upload time; a batch stored
under an older schema version is aligned to the current one here (added
columns are null, widened ones cast). Op semantics and partitions are those
of ``coordinator.parquet``: keyed tables keep the newest row per key within
the batch, and rows go to the event-time partition of their
``event_time_column`` value, or of the upload's time when there is none.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.bus import UploadBatch
from duckmesh.bus.batches import read_ipc
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import arrow_type
from duckmesh.coordinator.parquet import PartitionRows, _partition_name, _partition_seconds
from duckmesh.storage.layout import with_system_columns

_UTC_US = pa.timestamp("us", tz="UTC")


def _align(table: TableDef, data: pa.Table) -> pa.Table:
    arrays, fields = [], []
    for col in table.columns:
        target = arrow_type(col.parsed)
        fields.append(pa.field(col.name, target))
        if col.name in data.schema.names:
            arrays.append(data.column(col.name).cast(target))
        else:
            arrays.append(pa.nulls(data.num_rows, target))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _latest_per_key(full: pa.Table, key: tuple[str, ...]) -> pa.Array:
    """Row indexes of the newest row per key, ascending (rows are in token order)."""
    numbered = full.select(list(key)).append_column(
        "_dm_row", pa.array(range(full.num_rows), pa.int64())
    )
    newest = numbered.group_by(list(key), use_threads=False).aggregate([("_dm_row", "max")])
    rows = newest.column("_dm_row_max").combine_chunks()
    return rows.take(pc.sort_indices(rows))


def _floor_div(values: pa.Array, width: int) -> pa.Array:
    """Exact floor division of int64 values (Arrow's rounds toward zero)."""
    q = pc.divide(values, width)
    below = pc.less(pc.subtract(values, pc.multiply(q, width)), 0)
    return pc.subtract(q, below.cast(pa.int64()))


def _event_micros(upload: UploadBatch, data: pa.Table) -> tuple[pa.Array, pa.Array | None]:
    """Each row's partitioning instant (µs since the epoch, UTC) and its event times."""
    since = upload.ingested_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    stamp = since // dt.timedelta(microseconds=1)
    if upload.event_time_column is None or upload.event_time_column not in data.schema.names:
        return pa.repeat(pa.scalar(stamp, pa.int64()), data.num_rows), None
    times = data.column(upload.event_time_column).combine_chunks().cast(_UTC_US)
    return pc.fill_null(times.cast(pa.int64()), stamp), times


def build_upload(table: TableDef, upload: UploadBatch) -> list[PartitionRows]:
    """The upload's rows as Parquet-ready partitions of ``table``."""
    data = _align(table, read_ipc(upload.data))
    count = upload.last_token - upload.first_token + 1
    if count != data.num_rows:
        raise ValueError(f"upload batch holds {data.num_rows} rows for {count} tokens")
    tokens = range(upload.first_token, upload.last_token + 1)
    full = with_system_columns(data, tokens, [upload.op] * count)
    rows = (
        _latest_per_key(full, table.primary_key)
        if table.primary_key
        else pa.array(range(count), pa.int64())
    )
    micros, times = _event_micros(upload, full)
    seconds = _partition_seconds(table)
    buckets = _floor_div(micros.take(rows), seconds * 1_000_000)
    order = pc.sort_indices(
        pa.table({"b": buckets, "r": rows}), [("b", "ascending"), ("r", "ascending")]
    )
    rows, buckets = rows.take(order), buckets.take(order)
    runs = pc.run_end_encode(buckets)
    out: list[PartitionRows] = []
    start = 0
    for bucket, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        idx = rows.slice(start, end - start)
        span = None if times is None else pc.min_max(times.take(idx))
        out.append(
            PartitionRows(
                table=table,
                partition=_partition_name(bucket, seconds),
                arrow=full if len(idx) == full.num_rows else full.take(idx),
                min_token=tokens[idx[0].as_py()],
                max_token=tokens[idx[-1].as_py()],
                min_event_time=None if span is None else span["min"].as_py(),
                max_event_time=None if span is None else span["max"].as_py(),
            )
        )
        start = end
    return out
