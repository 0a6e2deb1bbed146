"""Pruning the Postgres bus: committed rows older than the idempotency window go.

A tenant's bus rows (``bus_record``, ``bus_batch``, ``bus_row_key``,
``bus_upload``) are deleted as one token range at a time, oldest first, from
``bus_scope.pruned_token`` (where the last run stopped) up to the first token
that is either not yet committed (above ``acked_token``) or ingested within
the window. Each range is one transaction of set-based deletes over the
tables' ``(tenant_id, token)`` indexes, bounded by ``chunk_tokens``, so a
large backlog never holds one long transaction and never deletes row by row
(ADR 0016). A quarantined record or batch is kept (the quarantine report
names its idempotency key), everything else in the range goes, so a retry of
a pruned key is a new record: idempotency holds within the window.

After a run that deleted anything the bus tables are vacuumed, so ingest
reuses the space at once and the tables level off at about rate times window.

Rows are ingested in token order only approximately (a transaction's
``now()`` is its start, tokens follow the counter lock), so the window is
checked per range: a range stops before its first young token.
"""

from __future__ import annotations

import datetime as dt

from duckmesh.bus.protocol import BusPrune, BusRetained
from duckmesh.db import Conn, Database

_KEEP_QUARANTINED_RECORD = (
    " AND NOT EXISTS (SELECT 1 FROM bus_quarantine q"
    " WHERE q.tenant_id = r.tenant_id AND q.token = r.token)"
)
_KEEP_QUARANTINED_BATCH = (
    " AND NOT EXISTS (SELECT 1 FROM bus_quarantine q WHERE q.tenant_id = b.tenant_id"
    " AND q.token BETWEEN b.first_token AND b.last_token)"
)


def _positions(conn: Conn, tenant_id: str) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT pruned_token, acked_token FROM bus_scope WHERE scope = %s", (tenant_id,)
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _skip_empty(conn: Conn, tenant_id: str, lo: int, acked: int) -> int:
    """Move past tokens no row holds (pruned ranges kept for quarantined rows,
    the void range a restore left): ranges start at the next row."""
    row = conn.execute(
        "SELECT least("
        " (SELECT min(token) FROM bus_record WHERE tenant_id = %(t)s AND token > %(lo)s),"
        " (SELECT min(first_token) FROM bus_batch WHERE tenant_id = %(t)s"
        "  AND first_token > %(lo)s))",
        {"t": tenant_id, "lo": lo},
    ).fetchone()
    nxt = row[0] if row is not None and row[0] is not None else acked + 1
    return max(lo, min(int(nxt) - 1, acked))


def _range_end(
    conn: Conn, tenant_id: str, lo: int, hi: int, acked: int, cutoff: dt.datetime
) -> int:
    """The end of the prunable range (lo, hi]: before the first row ingested
    at or after ``cutoff``, and never cutting an upload batch in two (one
    that starts in the range and ends past it is taken whole when committed;
    its start was checked against the window with the range)."""
    row = conn.execute(
        "SELECT least("
        " (SELECT min(token) FROM bus_record WHERE tenant_id = %(t)s"
        "  AND token > %(lo)s AND token <= %(hi)s AND ingested_at >= %(cut)s),"
        " (SELECT min(first_token) FROM bus_batch WHERE tenant_id = %(t)s"
        "  AND first_token > %(lo)s AND first_token <= %(hi)s AND ingested_at >= %(cut)s))",
        {"t": tenant_id, "lo": lo, "hi": hi, "cut": cutoff},
    ).fetchone()
    if row is not None and row[0] is not None:
        return int(row[0]) - 1
    straddling = conn.execute(
        "SELECT first_token, last_token FROM bus_batch WHERE tenant_id = %s"
        " AND first_token > %s AND first_token <= %s AND last_token > %s",
        (tenant_id, lo, hi, hi),
    ).fetchone()
    if straddling is None:
        return hi
    first, last = int(straddling[0]), int(straddling[1])
    return last if last <= acked else first - 1


def _prune_range(conn: Conn, tenant_id: str, lo: int, hi: int) -> int:
    """Delete the tenant's rows with tokens in (lo, hi]; returns records and rows deleted."""
    args = {"t": tenant_id, "lo": lo, "hi": hi}
    records = conn.execute(
        "DELETE FROM bus_record r WHERE r.tenant_id = %(t)s"
        " AND r.token > %(lo)s AND r.token <= %(hi)s" + _KEEP_QUARANTINED_RECORD,
        args,
    ).rowcount
    rows = conn.execute(
        "WITH gone AS (DELETE FROM bus_batch b WHERE b.tenant_id = %(t)s"
        " AND b.first_token > %(lo)s AND b.last_token <= %(hi)s"
        + _KEEP_QUARANTINED_BATCH
        + " RETURNING last_token - first_token + 1 AS n) SELECT coalesce(sum(n), 0) FROM gone",
        args,
    ).fetchone()
    conn.execute(
        "DELETE FROM bus_row_key k WHERE k.tenant_id = %(t)s"
        " AND k.token > %(lo)s AND k.token <= %(hi)s"
        # A quarantined record's key stays: the lag report names it.
        " AND NOT EXISTS (SELECT 1 FROM bus_quarantine q"
        " WHERE q.tenant_id = k.tenant_id AND q.token = k.token)",
        args,
    )
    conn.execute(
        "DELETE FROM bus_upload WHERE tenant_id = %(t)s"
        " AND last_token > %(lo)s AND last_token <= %(hi)s",
        args,
    )
    return records + (int(rows[0]) if rows else 0)


def prune(db: Database, tenant_id: str, *, window_s: float, chunk_tokens: int) -> BusPrune:
    """Delete the tenant's committed rows older than ``window_s``, one token
    range of at most ``chunk_tokens`` per transaction."""
    deleted = 0
    while True:

        def step(conn: Conn) -> tuple[int, int] | None:
            positions = _positions(conn, tenant_id)
            if positions is None:
                return None
            stored, acked = positions
            lo = _skip_empty(conn, tenant_id, stored, acked)
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            cutoff = now[0] - dt.timedelta(seconds=window_s)
            hi = _range_end(conn, tenant_id, lo, min(lo + chunk_tokens, acked), acked, cutoff)
            if hi <= lo:
                hi = lo  # nothing to delete; still record the skipped empty tokens
                if hi == stored:
                    return None
            # Guarded by the old position: of two concurrent pruners one moves on.
            moved = conn.execute(
                "UPDATE bus_scope SET pruned_token = %s WHERE scope = %s AND pruned_token = %s",
                (hi, tenant_id, stored),
            ).rowcount
            if moved != 1:
                return None
            return (_prune_range(conn, tenant_id, lo, hi) if hi > lo else 0), hi

        result = db.call(step)
        if result is None:
            break
        deleted += result[0]
    if deleted:
        _vacuum(db)
    positions = db.call(lambda conn: _positions(conn, tenant_id), transaction=False)
    return BusPrune(deleted, positions[0] if positions else 0)


def _vacuum(db: Database) -> None:
    """Make the deleted rows' space reusable now rather than at autovacuum's
    next turn (up to a minute away, during which ingest would grow the
    tables instead of reusing it). Plain VACUUM: no lock against readers or
    writers; it visits only pages with dead rows (visibility map)."""

    def run(conn: Conn) -> None:
        conn.execute("VACUUM (ANALYZE) bus_record, bus_batch, bus_row_key, bus_upload")

    db.call(run, transaction=False)


# Records a tenant's bus holds: the tokens above the pruned position, plus
# the quarantined ones kept below it. No scan of the tenant's rows.
_HELD = (
    "SELECT c.last_token - coalesce(s.pruned_token, 0)"
    " + (SELECT count(*) FROM bus_quarantine q WHERE q.tenant_id = c.tenant_id"
    "    AND q.token <= coalesce(s.pruned_token, 0))"
    " FROM bus_token_counter c LEFT JOIN bus_scope s ON s.scope = c.tenant_id"
)


def retained(db: Database, tenant_id: str) -> BusRetained:
    """Records (and upload rows) a tenant's bus holds, and the bus tables'
    size on disk attributed by its share of the records (indexes and space
    awaiting reuse included). Computed from counters and catalog sizes, not
    by scanning the rows: the collector calls it every run."""

    def run(conn: Conn) -> BusRetained:
        mine = conn.execute(_HELD + " WHERE c.tenant_id = %s", (tenant_id,)).fetchone()
        held = int(mine[0]) if mine and mine[0] is not None else 0
        row = conn.execute(
            f"SELECT (SELECT coalesce(sum(n), 0) FROM ({_HELD}) AS t(n)),"
            " pg_total_relation_size('bus_record') + pg_total_relation_size('bus_batch')"
            " + pg_total_relation_size('bus_row_key') + pg_total_relation_size('bus_upload')"
        ).fetchone()
        assert row is not None
        total, size = int(row[0]), int(row[1])
        return BusRetained(held, size * held // total if total else 0)

    return db.call(run, transaction=False)
