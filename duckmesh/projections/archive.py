"""Where a catalog checkpoint lives (ADR 0016), for replay and for taking one.

A checkpoint is the projection tables as of a log position, kept in schema
``duckmesh_checkpoint`` (one table per projection table, same columns), with
its position in ``catalog_checkpoint``. Replay loads it and applies only the
events after it. Taking a checkpoint and replaying from one exclude each
other through one advisory lock, so a replay never sees a half-swapped
checkpoint.
"""

from __future__ import annotations

from typing import Any

import psycopg

Conn = psycopg.Connection[Any]
CHECKPOINT_SCHEMA = "duckmesh_checkpoint"
# pg_advisory_xact_lock key of checkpoints ("dmckpt" as digits).
_LOCK_KEY = 0x646D636B7074
# The bulk of the log, moved to the archive once a checkpoint holds their
# effect. Administrative events (tenants, keys, tables, pins) stay in the
# log, so GET /v1/audit keeps that history.
ARCHIVED_TYPES = (
    "SnapshotPublished",
    "SnapshotsExpired",
    "FilesCollected",
    "MaintenanceCompleted",
    "CatalogPruned",
)
ARCHIVE_PREFIX = "_catalog/events"


def checkpoint_position(conn: Conn) -> int:
    """The log position of the latest checkpoint (0: none)."""
    row = conn.execute("SELECT coalesce(max(position), 0) FROM catalog_checkpoint").fetchone()
    return int(row[0]) if row else 0


def hold_checkpoint(conn: Conn, *, shared: bool) -> None:
    """Hold the checkpoint lock until the transaction ends (shared: replay)."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(f"SELECT {fn}(%s)", (_LOCK_KEY,))


def archive_key(first: int, last: int) -> str:
    """The object key of the archived events with positions first..last."""
    return f"{ARCHIVE_PREFIX}/{first:020d}-{last:020d}.parquet"
