"""Turning an upload batch into Parquet rows, as Arrow all the way (ADR 0013).

The rows were cast to the table's schema at upload time; a batch stored
under an older schema version is aligned to the current one here (added
columns are null, widened ones cast). Op semantics and partitions are those
of ``coordinator.parquet``: keyed tables keep the newest row per key within
the batch, and rows go to the event-time partition of their
``event_time_column`` value, or of the upload's time when there is none.
Batches of JSON records (ADR 0014) carry each row's op in ``_dm_op`` when
their ops are mixed, and their event times in ``_dm_event_time``.
"""

from __future__ import annotations

import datetime as dt

import attrs
import pyarrow as pa
import pyarrow.compute as pc

from duckmesh.bus import UploadBatch
from duckmesh.bus.batches import read_ipc
from duckmesh.bus.record_batches import OP_COLUMN
from duckmesh.catalog.model import TableDef
from duckmesh.catalog.types import arrow_type
from duckmesh.coordinator.parquet import PartitionRows, _partition_name, _partition_seconds
from duckmesh.storage.layout import OP_COLUMN as LAYOUT_OP_COLUMN
from duckmesh.storage.layout import TOKEN_COLUMN, file_schema

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


@attrs.frozen
class UploadRows:
    """Rows of one stored batch, decoded, with their tokens; bisection and
    quarantine take slices and subsets of it (ADR 0014)."""

    upload: UploadBatch
    data: pa.Table  # as stored: the table's columns, maybe _dm_op / _dm_event_time
    tokens: pa.Array  # int64, one per row, ascending

    @classmethod
    def decode(cls, upload: UploadBatch) -> UploadRows:
        data = read_ipc(upload.data)
        if upload.rows != data.num_rows:
            raise ValueError(f"upload batch holds {data.num_rows} rows for {upload.rows} tokens")
        tokens = pa.array(range(upload.first_token, upload.last_token + 1), pa.int64())
        return cls(upload, data, tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def slice(self, start: int, length: int) -> UploadRows:
        return UploadRows(
            self.upload, self.data.slice(start, length), self.tokens.slice(start, length)
        )

    def without(self, tokens: set[int]) -> UploadRows:
        """These rows less those whose token is in ``tokens``."""
        first, last = self.upload.first_token, self.upload.last_token
        drop = [t for t in tokens if first <= t <= last]
        if not drop:
            return self
        keep = pc.invert(pc.is_in(self.tokens, pa.array(drop, pa.int64())))
        return UploadRows(self.upload, self.data.filter(keep), self.tokens.filter(keep))

    def contains_text(self, needle: str) -> bool:
        """Whether any text cell holds ``needle`` (the poison fault point)."""
        for column in self.data.columns:
            if (
                pa.types.is_string(column.type)
                and pc.any(pc.match_substring(column, needle)).as_py()
            ):
                return True
        return False


def _event_micros(upload: UploadBatch, data: pa.Table) -> tuple[pa.Array, pa.Array | None]:
    """Each row's partitioning instant (µs since the epoch, UTC) and its event times."""
    since = upload.ingested_at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    stamp = since // dt.timedelta(microseconds=1)
    if upload.event_time_column is None or upload.event_time_column not in data.schema.names:
        return pa.repeat(pa.scalar(stamp, pa.int64()), data.num_rows), None
    times = data.column(upload.event_time_column).combine_chunks().cast(_UTC_US)
    return pc.fill_null(times.cast(pa.int64()), stamp), times


def _ops(rows: UploadRows) -> pa.Array:
    """Each row's op: per row for records of mixed ops, else the batch's op."""
    raw = rows.data
    if OP_COLUMN in raw.schema.names:
        return raw.column(OP_COLUMN).combine_chunks().cast(pa.string())
    return pa.repeat(pa.scalar(rows.upload.op, pa.string()), raw.num_rows)


def _with_system_columns(data: pa.Table, tokens: pa.Array, ops: pa.Array) -> pa.Table:
    """The file's rows: user columns, then ``_dm_token`` and ``_dm_op``."""
    schema = file_schema(data.schema)
    return data.append_column(schema.field(TOKEN_COLUMN), tokens).append_column(
        schema.field(LAYOUT_OP_COLUMN), ops
    )


def build_upload(table: TableDef, upload: UploadBatch) -> list[PartitionRows]:
    """The upload's rows as Parquet-ready partitions of ``table``."""
    return build_rows(table, UploadRows.decode(upload))


def build_rows(table: TableDef, rows: UploadRows) -> list[PartitionRows]:
    """Some rows of an upload batch as Parquet-ready partitions of ``table``."""
    return build_many(table, [rows])


@attrs.frozen
class _Prepared:
    """Rows of one or more stored batches with what partitioning needs."""

    full: pa.Table  # the table's columns aligned, then _dm_token and _dm_op
    tokens: pa.Array
    micros: pa.Array  # each row's partitioning instant, µs since the epoch
    times: pa.Array  # each row's event time (null when it has none)


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _prepare(table: TableDef, run: list[UploadRows]) -> _Prepared:
    """Batches stored with the same schema, aligned and cast once together."""
    data = run[0].data if len(run) == 1 else pa.concat_tables([r.data for r in run])
    micros, times = [], []
    for rows in run:
        m, t = _event_micros(rows.upload, rows.data)
        micros.append(m)
        times.append(pa.nulls(len(rows), _UTC_US) if t is None else t)
    tokens = _concat([rows.tokens for rows in run])
    return _Prepared(
        full=_with_system_columns(_align(table, data), tokens, _concat([_ops(r) for r in run])),
        tokens=tokens,
        micros=_concat(micros),
        times=_concat(times),
    )


def _same_schema_runs(batches: list[UploadRows]) -> list[list[UploadRows]]:
    """Consecutive non-empty batches stored with the same Arrow schema."""
    runs: list[list[UploadRows]] = []
    for rows in batches:
        if not len(rows):
            continue
        if runs and runs[-1][0].data.schema.equals(rows.data.schema):
            runs[-1].append(rows)
        else:
            runs.append([rows])
    return runs


def build_many(table: TableDef, batches: list[UploadRows]) -> list[PartitionRows]:
    """Rows of several stored batches of ``table`` (in token order) as one set
    of Parquet-ready partitions: a commit writes one file per (table,
    partition) however many small batches it holds, and a keyed table keeps
    the newest row per key across them, as within one batch."""
    parts = [_prepare(table, run) for run in _same_schema_runs(batches)]
    if not parts:
        return []
    if len(parts) == 1:
        one = parts[0]
    else:
        one = _Prepared(
            full=pa.concat_tables([p.full for p in parts]),
            tokens=pa.concat_arrays([p.tokens for p in parts]),
            micros=pa.concat_arrays([p.micros for p in parts]),
            times=pa.concat_arrays([p.times for p in parts]),
        )
    return _partitions(table, one)


def _partitions(table: TableDef, rows: _Prepared) -> list[PartitionRows]:
    full, tokens, count = rows.full, rows.tokens, rows.full.num_rows
    picked = (
        _latest_per_key(full, table.primary_key)
        if table.primary_key
        else pa.array(range(count), pa.int64())
    )
    seconds = _partition_seconds(table)
    buckets = _floor_div(rows.micros.take(picked), seconds * 1_000_000)
    order = pc.sort_indices(
        pa.table({"b": buckets, "r": picked}), [("b", "ascending"), ("r", "ascending")]
    )
    picked, buckets = picked.take(order), buckets.take(order)
    runs = pc.run_end_encode(buckets)
    out: list[PartitionRows] = []
    start = 0
    for bucket, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        idx = picked.slice(start, end - start)
        span = pc.min_max(rows.times.take(idx))
        out.append(
            PartitionRows(
                table=table,
                partition=_partition_name(bucket, seconds),
                arrow=full if len(idx) == count else full.take(idx),
                min_token=tokens[idx[0].as_py()].as_py(),
                max_token=tokens[idx[-1].as_py()].as_py(),
                min_event_time=span["min"].as_py(),
                max_event_time=span["max"].as_py(),
            )
        )
        start = end
    return out
