"""Uploads on the Postgres bus (ADR 0013): Arrow IPC batches in ``bus_batch``.

An upload's new rows get contiguous tokens from the tenant's counter, locked
as for records, so records and uploads share one gapless, commit-ordered
sequence. The rows are stored as Arrow IPC streams of at most
``CHUNK_ROWS`` rows each, in the transaction that assigns the tokens: durable
before the ack, and never half-written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from duckmesh.bus.protocol import BusRecord, UploadBatch, UploadReceipt, UploadRequest
from duckmesh.db import Conn
from duckmesh.errors import DuckMeshError

# Rows per stored batch: the coordinator's default batch size, so one claim
# holds about one stored batch.
CHUNK_ROWS = 100_000
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
# Below this many bytes of Arrow data a batch is stored uncompressed: zstd
# saves nothing on a group commit's few rows (912 vs 944 bytes for 10) but
# costs ~0.3 ms to write and again to read per batch, against ~0.01 ms
# uncompressed (a commit reads every stored batch it claims). Readers take
# either: IPC buffers say whether they are compressed.
COMPRESS_MIN_BYTES = 256 * 1024
_PLAIN_IPC = pa.ipc.IpcWriteOptions()
# Upload batches looked at per claim (each at least one row).
_CLAIM_BATCHES = 64


def existing_row_keys(
    conn: Conn, tenant_id: str, table_id: str, keys: Sequence[str]
) -> dict[str, tuple[int, str]]:
    """key -> (token, hash) of keys already used by records or upload rows
    (``bus_row_key`` holds both since ADR 0014).

    Record hashes are SHA-256 hex and upload row hashes MD5 hex: a key sent
    once as a JSON record and once in an upload never matches as the same
    content, so it is a conflict (documented in docs/API.md).
    """
    rows = conn.execute(
        "SELECT k.key, b.token, b.row_hash FROM unnest(%s::text[]) AS k(key)"
        " JOIN bus_row_key b ON b.tenant_id = %s AND b.table_id = %s"
        " AND b.idempotency_key = k.key",
        (list(keys), tenant_id, table_id),
    )
    return {k: (int(tok), h) for k, tok, h in rows}


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = _IPC_OPTIONS if table.nbytes >= COMPRESS_MIN_BYTES else _PLAIN_IPC
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def read_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _text(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _conflict(message: str, **context: Any) -> DuckMeshError:
    return DuckMeshError("IDEMPOTENCY_CONFLICT", message, **context)


def prior_upload(
    conn: Conn, tenant_id: str, table_id: str, key: str, content_hash: bytes
) -> UploadReceipt | None:
    """The receipt of an upload already stored under ``key`` (as duplicates),
    None when there is none; 409 when it was stored with other content."""
    row = conn.execute(
        "SELECT content_hash, last_token, row_count FROM bus_upload"
        " WHERE tenant_id = %s AND table_id = %s AND idempotency_key = %s",
        (tenant_id, table_id, key),
    ).fetchone()
    if row is None:
        return None
    stored_hash, last, count = row
    if bytes(stored_hash) != content_hash:
        raise _conflict(
            f"Idempotency-Key {key!r} was already used with a different body; nothing was written",
            idempotency_key=key,
            original_token=last,
        )
    return UploadReceipt(0, int(count), int(last or 0), None, None)


def _new_rows(conn: Conn, tenant_id: str, up: UploadRequest) -> tuple[pa.Table, list[int], int]:
    """The rows whose key is new, their indexes, and the top token of the duplicates."""
    assert up.row_keys is not None
    assert up.row_hashes is not None
    existing = existing_row_keys(conn, tenant_id, up.table_id, up.row_keys)
    if not existing:
        return up.data, list(range(up.data.num_rows)), 0
    keep: list[int] = []
    top = 0
    for i, (key, digest) in enumerate(zip(up.row_keys, up.row_hashes, strict=True)):
        prior = existing.get(key)
        if prior is None:
            keep.append(i)
        elif prior[1] != digest:
            raise _conflict(
                f"row {i}: idempotency key {key!r} was already used with different content;"
                " nothing was written",
                row=i,
                idempotency_key=key,
                original_token=prior[0],
            )
        else:
            top = max(top, prior[0])
    return up.data.take(pa.array(keep, pa.int64())), keep, top


def publish_upload(
    conn: Conn, tenant_id: str, up: UploadRequest, last: int, now: dt.datetime
) -> tuple[UploadReceipt, int]:
    """Write one upload with the counter locked at ``last``; returns the
    receipt and the new last token (the caller bumps the counter)."""
    if up.idempotency_key is not None:
        prior = prior_upload(conn, tenant_id, up.table_id, up.idempotency_key, up.content_hash)
        if prior is not None:
            return prior, last
        data, kept, dup_top = up.data, list(range(up.data.num_rows)), 0
    else:
        data, kept, dup_top = _new_rows(conn, tenant_id, up)
    first = last + 1
    n = data.num_rows
    for start in range(0, n, CHUNK_ROWS):
        chunk = data.slice(start, CHUNK_ROWS)
        conn.execute(
            "INSERT INTO bus_batch (tenant_id, first_token, last_token, table_id, op,"
            " event_time_column, ingested_at, schema_version, data, trace_ids)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                tenant_id,
                first + start,
                first + start + chunk.num_rows - 1,
                up.table_id,
                up.op,
                up.event_time_column,
                now,
                up.schema_version,
                ipc(chunk),
                [up.trace_id] if up.trace_id else None,
            ),
        )
    if up.row_keys is not None and n:
        assert up.row_hashes is not None
        lines = "".join(
            f"{_text(tenant_id)}\t{_text(up.table_id)}\t{_text(up.row_keys[i])}"
            f"\t{first + j}\t{up.row_hashes[i]}\n"
            for j, i in enumerate(kept)
        )
        copy_sql = (
            "COPY bus_row_key (tenant_id, table_id, idempotency_key, token, row_hash) FROM STDIN"
        )
        with conn.cursor().copy(copy_sql) as copy:
            copy.write(lines.encode())
    if up.idempotency_key is not None:
        conn.execute(
            "INSERT INTO bus_upload (tenant_id, table_id, idempotency_key, content_hash,"
            " first_token, last_token, row_count) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                tenant_id,
                up.table_id,
                up.idempotency_key,
                up.content_hash,
                first if n else None,
                last + n if n else None,
                up.data.num_rows,
            ),
        )
    span = (first, last + n) if n else (None, None)
    receipt = UploadReceipt(n, up.data.num_rows - n, max(last + n if n else 0, dup_top), *span)
    return receipt, last + n


def claim_heads(conn: Conn, scope: str, acked: int, last: int) -> Any:
    """The cursor of the scope's upload batch heads after ``acked`` (token
    range and size), for ``claim_uploads``; not fetched, so that a pipeline
    can send it with the claim's other reads."""
    return conn.execute(
        "SELECT first_token, last_token, octet_length(data) FROM bus_batch"
        " WHERE tenant_id = %s AND first_token > %s AND first_token <= %s"
        " ORDER BY first_token LIMIT %s",
        (scope, acked, last, _CLAIM_BATCHES),
    )


def claim_uploads(
    conn: Conn,
    scope: str,
    acked: int,
    records: list[Any],
    heads: list[Any],
    limit: int,
    max_bytes: int,
) -> tuple[list[BusRecord], list[UploadBatch]]:
    """Merge the scope's records (``records``: claim rows in token order, up
    to ``limit``) with its upload batches (``heads``: ``claim_heads`` rows)
    into the longest gapless run of tokens after ``acked`` within ``limit``
    rows and ``max_bytes`` (at least one item, however large)."""
    taken: list[BusRecord] = []
    chosen: list[int] = []
    pos, rows, size, r, h = acked, 0, 0, 0, 0
    while True:
        is_record = r < len(records) and records[r][0] == pos + 1
        if is_record:
            payload: str = records[r][3]  # max_bytes counts UTF-8 bytes
            item_rows, item_size = 1, len(payload) if payload.isascii() else len(payload.encode())
            nxt = pos + 1
        elif h < len(heads) and heads[h][0] == pos + 1:
            item_rows, item_size, nxt = heads[h][1] - heads[h][0] + 1, heads[h][2], heads[h][1]
        else:
            break  # the end of what was read (tokens have no gaps)
        if rows and (rows + item_rows > limit or size + item_size > max_bytes):
            break
        if is_record:
            taken.append(BusRecord._make(records[r]))
            r += 1
        else:
            chosen.append(heads[h][0])
            h += 1
        pos, rows, size = nxt, rows + item_rows, size + item_size
    uploads: list[UploadBatch] = []
    if chosen:
        data = conn.execute(
            "SELECT first_token, last_token, table_id, op, event_time_column, ingested_at,"
            " schema_version, data, trace_ids FROM bus_batch WHERE tenant_id = %s"
            " AND first_token = ANY(%s::bigint[]) ORDER BY first_token",
            (scope, chosen),
        ).fetchall()
        uploads = [
            UploadBatch(
                first_token=row[0],
                last_token=row[1],
                table_id=row[2],
                op=row[3],
                event_time_column=row[4],
                ingested_at=row[5],
                schema_version=row[6],
                data=bytes(row[7]),
                trace_ids=tuple(row[8] or ()),  # NULL: written before migration 0008
            )
            for row in data
        ]
    return taken, uploads
