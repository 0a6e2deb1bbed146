"""Streamed query results (Arrow, CSV, NDJSON, Parquet), produced in a worker thread.

Why it exists: a non-JSON result leaves in chunks so that the server holds a
bounded part of it. ``produce`` runs in a worker thread: it checks and runs
the statement through ``SnapshotDatabase.running`` (the same sandbox, limits
and deadline as a JSON query), reads Arrow record batches straight from
DuckDB, and hands encoded chunks to ``emit``, which blocks while the
consumer's bounded channel is full.

Truncation (more rows than ``row_limit``) goes in a response header, so it
must be known before the first byte: up to ``readahead_bytes`` of batches
(``DUCKMESH_QUERY_STREAM_READAHEAD_MB``) are read ahead. When the result
within the row limit fits, the header says exactly ``true`` or ``false``;
otherwise it says ``unknown`` and the stream simply ends after ``row_limit``
rows. A larger read-ahead makes the header exact for larger results; a
smaller one lets the client start reading sooner (DuckDB and the network
then overlap).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import attrs
import pyarrow as pa
from duckdb.sqltypes import DuckDBPyType

from duckmesh.query._arrow_stream import open_stream
from duckmesh.query._formats import make_encoder
from duckmesh.query.sandbox import QueryLimits, SnapshotDatabase

__all__ = ["ROWS_PER_BATCH", "StreamHead", "emit_batches", "produce"]

ROWS_PER_BATCH = 65_536
Emit = Callable[[object], None]


@attrs.frozen
class StreamHead:
    """What the response headers say; sent before the first chunk."""

    truncated: bool | None  # None: not known when the headers left
    scanned_files: int
    scanned_bytes: int
    execution_ms: float


@attrs.define
class _Limit:
    truncated: bool | None = None


def _limited(
    reader: pa.RecordBatchReader, row_limit: int, state: _Limit
) -> Iterator[pa.RecordBatch]:
    """The reader's batches cut after ``row_limit`` rows; ``state.truncated``
    is set once known (a row past the limit was seen, or the end)."""
    left = row_limit
    for batch in reader:
        if batch.num_rows > left:
            state.truncated = True
            if left:
                yield batch.slice(0, left)
            return
        left -= batch.num_rows
        if batch.num_rows:
            yield batch
    state.truncated = False


def produce(
    database: SnapshotDatabase,
    sql: str,
    params: Sequence[object] | None,
    limits: QueryLimits,
    snapshot_id: int,
    media: str,
    readahead_bytes: int,
    emit: Emit,
) -> None:
    """Run the query and ``emit`` a ``StreamHead``, then ``bytes`` chunks (in a thread)."""
    started = time.perf_counter()
    with database.running(sql, params, limits, snapshot_id, execute=False) as (cursor, tables):
        stream = open_stream(cursor, sql, params, ROWS_PER_BATCH)
        reader = stream.reader()

        def head(truncated: bool | None) -> StreamHead:
            return StreamHead(
                truncated=truncated,
                scanned_files=sum(len(binding.files) for binding in tables),
                scanned_bytes=sum(binding.total_bytes for binding in tables),
                execution_ms=(time.perf_counter() - started) * 1000.0,
            )

        try:
            emit_batches(reader, stream.types, limits.row_limit, media, readahead_bytes, emit, head)
        finally:
            reader.close()  # before the cursor goes back to the idle ones


def emit_batches(
    reader: pa.RecordBatchReader,
    duck_types: list[DuckDBPyType],
    row_limit: int,
    media: str,
    readahead_bytes: int,
    emit: Emit,
    head: Callable[[bool | None], StreamHead],
) -> None:
    """Encode ``reader``'s batches as ``media``, cut after ``row_limit`` rows:
    ``emit`` the head (with truncation when known within the read-ahead),
    then the chunks."""
    encoder = make_encoder(media, reader.schema, duck_types)
    state = _Limit()
    batches = _limited(reader, row_limit, state)
    ahead: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        ahead.append(batch)
        held += batch.nbytes
        if held > readahead_bytes:
            break
    emit(head(state.truncated))
    for batch in ahead:
        emit(encoder.write(batch))
    del ahead
    for batch in batches:
        emit(encoder.write(batch))
    emit(encoder.finish())
