"""Result formats other than JSON: Arrow IPC stream, CSV, NDJSON, Parquet.

Why it exists: ``POST /v1/query`` answers in the format the ``Accept`` header
names. Every encoder takes Arrow record batches straight from DuckDB (no
Python row loop for Arrow, CSV and Parquet; NDJSON converts values with the
same rules as the JSON result, see ``_convert``) and hands back the bytes
produced so far after each batch, so a result leaves in chunks and the server
never holds more than one batch of it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from duckdb.sqltypes import DuckDBPyType

from duckmesh.errors import DuckMeshError
from duckmesh.query._convert import column_plan, convert_column

__all__ = ["JSON", "MEDIA_TYPES", "Encoder", "make_encoder"]

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, ARROW, CSV, NDJSON, PARQUET)
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Sink(io.RawIOBase):
    """A write-only file whose contents are taken away after every batch."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class Encoder:
    """Feeds record batches to a pyarrow writer; ``write``/``finish`` return new bytes."""

    def __init__(
        self, write: Callable[[pa.RecordBatch], None], close: Callable[[], None], sink: _Sink
    ) -> None:
        self._write = write
        self._close = close
        self._sink = sink

    def write(self, batch: pa.RecordBatch) -> bytes:
        self._write(batch)
        return self._sink.take()

    def finish(self) -> bytes:
        self._close()
        return self._sink.take()


def _nested(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type)]


def _ndjson(sink: _Sink, duck_types: list[DuckDBPyType]) -> Callable[[pa.RecordBatch], None]:
    plans = [column_plan(duck_type) for duck_type in duck_types]

    def write(batch: pa.RecordBatch) -> None:
        columns: list[Any] = []
        for plan, column in zip(plans, batch.columns, strict=True):
            values = column.to_pylist()
            columns.append(convert_column(values, plan.convert) if plan.convert else values)
        for row in zip(*columns, strict=True):
            sink.write(_encode_json(list(row)).encode() + b"\n")

    return write


def make_encoder(media: str, schema: pa.Schema, duck_types: list[DuckDBPyType]) -> Encoder:
    """An encoder of ``media`` for batches of ``schema``; VALIDATION_FAILED when
    the format cannot carry a column (CSV has no nested values)."""
    sink = _Sink()
    if media == ARROW:
        writer: Any = pa.ipc.new_stream(sink, schema)
        return Encoder(writer.write_batch, writer.close, sink)
    if media == PARQUET:
        writer = pq.ParquetWriter(sink, schema)
        return Encoder(writer.write_batch, writer.close, sink)
    if media == CSV:
        nested = _nested(schema)
        if nested:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"text/csv cannot carry the nested columns {nested}; ask for Arrow, "
                "Parquet or NDJSON, or select them as strings",
                columns=nested,
            )
        writer = pacsv.CSVWriter(sink, schema)
        return Encoder(writer.write_batch, writer.close, sink)
    if media == NDJSON:
        return Encoder(_ndjson(sink, duck_types), lambda: None, sink)
    raise ValueError(f"no encoder for {media!r}")
