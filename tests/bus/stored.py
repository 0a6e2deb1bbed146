"""What the Postgres bus holds for a tenant's JSON records, whichever way
they are stored: rows of ``bus_batch`` (ADR 0014) or legacy ``bus_record``
rows, joined to their key in ``bus_row_key``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, NamedTuple

import psycopg
import pyarrow as pa

from duckmesh.bus.record_batches import EVENT_TIME_COLUMN, OP_COLUMN


class StoredRecord(NamedTuple):
    token: int
    payload: dict[str, Any]
    row_hash: str  # hex
    op: str
    event_time: dt.datetime | None


def stored_records(dsn: str, tenant_id: str) -> dict[str, StoredRecord]:
    """idempotency key -> the record stored under it."""
    rows: dict[int, tuple[dict[str, Any], str, dt.datetime | None]] = {}
    with psycopg.connect(dsn) as conn:
        keys = conn.execute(
            "SELECT idempotency_key, token, row_hash FROM bus_row_key WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
        for first, op, data in conn.execute(
            "SELECT first_token, op, data FROM bus_batch WHERE tenant_id = %s", (tenant_id,)
        ):
            table = pa.ipc.open_stream(pa.py_buffer(bytes(data))).read_all()
            for i, row in enumerate(table.to_pylist()):
                row_op = row.pop(OP_COLUMN, op)
                rows[first + i] = (row, row_op, row.pop(EVENT_TIME_COLUMN, None))
        for token, payload, op, event_time in conn.execute(
            "SELECT token, payload, op, event_time FROM bus_record WHERE tenant_id = %s",
            (tenant_id,),
        ):
            rows[token] = (json.loads(payload), op, event_time)
    out = {}
    for key, token, row_hash in keys:
        payload, op, event_time = rows[token]
        out[key] = StoredRecord(token, payload, row_hash, op, event_time)
    return out
