"""Catalog checkpoints: the event log stays bounded (ADR 0016).

A checkpoint is the projection tables as they are after every event up to a
log position P, built by replay (the previous checkpoint plus the events
after it, up to P; never copied from the live tables, so it is exactly what
the log says). Then, in the same transaction, the events at or before P of
the bulk types (``ARCHIVED_TYPES``: snapshots and maintenance) are written
as one Parquet file to the object store (``_catalog/events/<first>-<P>``)
and deleted from ``event_log``, and the new checkpoint replaces the old.

The checkpoint keeps only the live rows of the replay (a plain copy without
indexes: it is only ever read whole), so its size follows the catalog's
state, not the churn between checkpoints; ``catalog_checkpoint`` lists the
newest ``CHECKPOINTS_LISTED``; after archiving, ``event_log`` is vacuumed so
appends reuse the archived rows' space at once (ADR 0016).

Replay (``duckmesh replay verify``) starts from the checkpoint and applies
the events after it, so it still proves the live projections.

P is settled first: a ``SHARE`` lock on ``event_log`` waits for every
transaction that is appending (they hold ``ROW EXCLUSIVE``) and is released
at once, so every event at or before P is committed and visible, and any
later append gets a position after P. Writers are held up only for that
moment, never for the replay.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import structlog
from psycopg import sql

from duckmesh.db import Conn, Database
from duckmesh.projections import replay
from duckmesh.projections.archive import (
    ARCHIVED_TYPES,
    CHECKPOINT_SCHEMA,
    archive_key,
    checkpoint_position,
    hold_checkpoint,
)
from duckmesh.projections.catalog import PROJECTION_TABLES
from duckmesh.storage.protocol import ObjectStore

log = structlog.get_logger("duckmesh.checkpoint")
_NEXT_SCHEMA = "duckmesh_checkpoint_next"
# Rows of ``catalog_checkpoint`` kept (the newest): replay reads only the
# latest; older rows just list earlier archives, whose keys name their range.
CHECKPOINTS_LISTED = 100
_ARCHIVE_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("stream", pa.string()),
        ("version", pa.int32()),
        ("event_type", pa.string()),
        ("schema_version", pa.int32()),
        ("tenant_id", pa.string()),
        ("payload", pa.string()),  # JSON text
        ("metadata", pa.string()),  # JSON text
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


@attrs.frozen
class Checkpoint:
    position: int
    events_applied: int  # replayed on top of the previous checkpoint
    events_archived: int
    archive_key: str | None


def _settled_position(conn: Conn, lock_timeout_ms: int) -> int:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout_ms)))
    conn.execute("LOCK TABLE event_log IN SHARE MODE")
    row = conn.execute("SELECT coalesce(max(position), 0) FROM event_log").fetchone()
    return int(row[0]) if row else 0


def _archive(conn: Conn, store: ObjectStore, upto: int) -> tuple[int, str | None]:
    """Write the bulk events at or before ``upto`` to Parquet and delete them."""
    rows = conn.execute(
        "SELECT position, stream, version, event_type, schema_version, tenant_id,"
        " payload::text, metadata::text, recorded_at FROM event_log"
        " WHERE position <= %s AND event_type = ANY(%s) ORDER BY position",
        (upto, list(ARCHIVED_TYPES)),
    ).fetchall()
    if not rows:
        return 0, None
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {f.name: pa.array(col, f.type) for f, col in zip(_ARCHIVE_SCHEMA, columns, strict=True)},
        schema=_ARCHIVE_SCHEMA,
    )
    key = archive_key(int(rows[0][0]), upto)
    scratch = store.scratch_path(".parquet")
    pq.write_table(table, scratch, compression="zstd")
    store.put_file(scratch, key)  # durable before the events leave the log
    conn.execute(
        "DELETE FROM event_log WHERE position <= %s AND event_type = ANY(%s)",
        (upto, list(ARCHIVED_TYPES)),
    )
    return len(rows), key


def _install(conn: Conn) -> None:
    """Replace the checkpoint with the live rows of the replay in ``_NEXT_SCHEMA``
    (the replay's tables hold the dead rows of every insert a later event
    deleted, and indexes a checkpoint never uses)."""
    target = sql.Identifier(CHECKPOINT_SCHEMA)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(target))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(target))
    for table in PROJECTION_TABLES:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} AS TABLE {}.{}").format(
                target, sql.Identifier(table), sql.Identifier(_NEXT_SCHEMA), sql.Identifier(table)
            )
        )
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(_NEXT_SCHEMA)))


def _vacuum_log(db: Database) -> None:
    db.call(lambda conn: conn.execute("VACUUM (ANALYZE) event_log"), transaction=False)


def take(
    db: Database,
    store: ObjectStore,
    *,
    min_events: int,
    lock_timeout_ms: int = 5000,
    listed: int = CHECKPOINTS_LISTED,
) -> Checkpoint | None:
    """Checkpoint the catalog when at least ``min_events`` events were
    appended since the last checkpoint; None when there were fewer. The
    newest ``listed`` rows of ``catalog_checkpoint`` are kept."""
    try:
        upto = db.call(lambda conn: _settled_position(conn, lock_timeout_ms))
    except psycopg.errors.LockNotAvailable:
        log.warning("catalog checkpoint skipped: the event log stayed busy")
        return None

    def run(conn: Conn) -> Checkpoint | None:
        hold_checkpoint(conn, shared=False)
        base = checkpoint_position(conn)
        row = conn.execute(
            "SELECT count(*) FROM event_log WHERE position > %s AND position <= %s", (base, upto)
        ).fetchone()
        if upto <= base or row is None or int(row[0]) < min_events:
            return None
        applied = replay.build_scratch(conn, _NEXT_SCHEMA, upto=upto)
        archived, key = _archive(conn, store, upto)
        _install(conn)
        conn.execute(
            "INSERT INTO catalog_checkpoint (position, events_archived, archive_key)"
            " VALUES (%s, %s, %s)",
            (upto, archived, key),
        )
        conn.execute(
            "DELETE FROM catalog_checkpoint WHERE position < (SELECT position"
            " FROM catalog_checkpoint ORDER BY position DESC OFFSET %s LIMIT 1)",
            (listed - 1,),
        )
        return Checkpoint(upto, applied, archived, key)

    done = db.call(run)
    if done is not None:
        log.info("catalog checkpoint", **attrs.asdict(done))
        if done.events_archived:
            _vacuum_log(db)
    return done


def read_archive(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    """The archived events of one file, payload and metadata decoded."""
    table = pq.read_table(store.local_path(key))
    out = []
    for rec in table.to_pylist():
        rec["payload"] = json.loads(rec["payload"])
        rec["metadata"] = json.loads(rec["metadata"])
        out.append(rec)
    return out
