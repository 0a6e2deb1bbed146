"""Replay: rebuild every projection from the event log and compare or swap.

Replay starts from the latest catalog checkpoint (the projections as of a
log position, ``checkpoint.py``; ADR 0016) when there is one, and applies
the events after it.
``verify`` rebuilds into a scratch schema (tables created ``LIKE`` the live
ones, so there is one DDL) and diffs row sets; ``rebuild`` does the same
under a lock that stops appends, then replaces the live rows. Replay is
deterministic: projectors read only the events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg import sql

from duckmesh.events.store import read_all
from duckmesh.projections.archive import CHECKPOINT_SCHEMA, checkpoint_position, hold_checkpoint
from duckmesh.projections.catalog import PROJECTION_TABLES, apply

Conn = psycopg.Connection[Any]
Progress = Callable[[int], None]


@attrs.frozen
class TableDiff:
    table: str
    only_live: list[tuple[Any, ...]]
    only_replay: list[tuple[Any, ...]]
    live_rows: int
    replay_rows: int

    @property
    def equal(self) -> bool:
        return not self.only_live and not self.only_replay


class ReplayRefused(RuntimeError):
    """Rebuild cannot run safely now; the message says why."""


def _columns(conn: Conn, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows]


def _load_checkpoint(conn: Conn, schema: str) -> int:
    """Copy the latest checkpoint into ``schema``; its log position (0: none).
    Columns a later migration added take their defaults."""
    base = checkpoint_position(conn)
    if base == 0:
        return 0
    for table in PROJECTION_TABLES:
        names = _columns(conn, CHECKPOINT_SCHEMA, table)
        if not names:
            continue  # a projection table added after the checkpoint: empty then
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        conn.execute(
            sql.SQL("INSERT INTO {}.{} ({}) SELECT {} FROM {}.{}").format(
                sql.Identifier(schema),
                sql.Identifier(table),
                cols,
                cols,
                sql.Identifier(CHECKPOINT_SCHEMA),
                sql.Identifier(table),
            )
        )
    return base


def build_scratch(
    conn: Conn, schema: str, progress: Progress | None = None, upto: int | None = None
) -> int:
    """Rebuild the projections in ``schema``: the latest checkpoint, then the
    events after it (up to position ``upto``). Returns events applied."""
    ident = sql.Identifier(schema)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
    for table in PROJECTION_TABLES:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (LIKE public.{} INCLUDING ALL)").format(
                ident, sql.Identifier(table), sql.Identifier(table)
            )
        )
    base = _load_checkpoint(conn, schema)
    conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(ident))
    applied = 0
    # read_all runs on the same connection: event_log is not a projection
    # table, so it resolves to public.
    for rec in read_all(conn, base):
        if upto is not None and rec.position > upto:
            break
        apply(conn, rec)
        applied += 1
        if progress and applied % 500 == 0:
            progress(applied)
    conn.execute("SET LOCAL search_path TO public")
    return applied


def _diff(conn: Conn, schema: str, sample: int = 5) -> list[TableDiff]:
    diffs = []
    for table in PROJECTION_TABLES:
        live = sql.SQL("public.{}").format(sql.Identifier(table))
        scratch = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))

        def rows(a: sql.Composable, b: sql.Composable) -> list[tuple[Any, ...]]:
            query = sql.SQL("SELECT * FROM {} EXCEPT ALL SELECT * FROM {} LIMIT {}").format(
                a, b, sql.Literal(sample)
            )
            return [tuple(r) for r in conn.execute(query).fetchall()]

        def count(t: sql.Composable) -> int:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()
            return int(row[0]) if row else 0

        diffs.append(
            TableDiff(
                table=table,
                only_live=rows(live, scratch),
                only_replay=rows(scratch, live),
                live_rows=count(live),
                replay_rows=count(scratch),
            )
        )
    return diffs


def verify(conn: Conn, *, progress: Progress | None = None) -> list[TableDiff]:
    """Replay into a scratch schema and diff against the live catalog."""
    schema = "duckmesh_replay_verify"
    with conn.transaction():
        # A consistent view of log and projections, without blocking writers.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        hold_checkpoint(conn, shared=True)  # a checkpoint does not swap under us
        build_scratch(conn, schema, progress)
        diffs = _diff(conn, schema)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return diffs


def rebuild(conn: Conn, *, progress: Progress | None = None, lock_timeout_ms: int = 5000) -> int:
    """Replace the live projections with a replay; returns events applied."""
    schema = "duckmesh_replay_rebuild"
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout_ms)))
        # The checkpoint lock first, as a checkpoint takes it: no lock-order deadlock.
        hold_checkpoint(conn, shared=True)
        try:
            conn.execute("LOCK TABLE event_stream, event_log IN EXCLUSIVE MODE")
        except psycopg.errors.LockNotAvailable:
            raise ReplayRefused(
                "the event log is busy (appends in progress); stop writers or retry"
            ) from None
        applied = build_scratch(conn, schema, progress)
        for table in PROJECTION_TABLES:
            ident = sql.Identifier(table)
            conn.execute(sql.SQL("DELETE FROM public.{}").format(ident))
            conn.execute(
                sql.SQL("INSERT INTO public.{} SELECT * FROM {}.{}").format(
                    ident, sql.Identifier(schema), ident
                )
            )
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return applied
