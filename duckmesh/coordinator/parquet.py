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
from collections.abc import Sequence

import attrs
import pyarrow as pa

from duckmesh.bus import BusRecord
from duckmesh.bus.record_arrow import payloads_to_arrow
from duckmesh.catalog.model import TableDef
from duckmesh.storage import layout
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

    def data_file(self, key: str, size: int, checksum: str) -> layout.DataFile:
        """The catalog entry of these rows written as object ``key``."""
        return layout.DataFile(
            file_id=layout.new_file_id(),
            table_id=self.table.table_id,
            path=key,
            schema_version=self.table.schema_version,
            record_count=self.arrow.num_rows,
            size_bytes=size,
            checksum=checksum,
            min_token=self.min_token,
            max_token=self.max_token,
            min_event_time=self.min_event_time,
            max_event_time=self.max_event_time,
        )


def _partition_seconds(table: TableDef) -> int:
    return 86400 if (table.partition_by or {}).get("event_time") == "day" else 3600


def _partition_name(bucket: int, seconds: int) -> str:
    when = dt.datetime.fromtimestamp(bucket * seconds, dt.UTC)
    if seconds == 86400:
        return f"date={when:%Y-%m-%d}"
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def build_tables(
    table: TableDef, records: Sequence[BusRecord]
) -> tuple[list[PartitionRows], list[Rejected]]:
    """Apply op semantics and types to one table's records (in token order)."""
    user, indexes, bad = payloads_to_arrow(table, [r.payload for r in records])
    rejected = [Rejected(records[i].token, records[i].table_id, why) for i, why in bad]
    if user is None:
        return [], rejected
    kept = records if len(indexes) == len(records) else [records[i] for i in indexes]
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
