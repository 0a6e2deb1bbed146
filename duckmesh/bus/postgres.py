"""The Postgres ingest bus.

Tokens come from a per-tenant counter row locked ``FOR UPDATE`` in the
ingest transaction: the lock orders commits, so token ``n`` is committed
before any transaction can even read ``n`` as the counter — unlike a sequence,
whose values commit out of order (SPEC §2.3, proven by
``tests/bus/test_token_race.py`` with a negative control). JSON records
and uploads are stored as Arrow batches (``record_batches``, ``batches``;
ADR 0013, 0014), append-only; "committed" is derived from the scope's
``acked_token``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg

from duckmesh import unsafe
from duckmesh.bus import batches, record_batches, restore, retention
from duckmesh.bus.protocol import (
    Batch,
    BusPrune,
    BusRetained,
    IngestRecord,
    LeaseLost,
    QuarantineEntry,
    Receipts,
    TokenJump,
    UploadReceipt,
    UploadRequest,
)
from duckmesh.catalog import reads
from duckmesh.catalog.model import TableDef
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError

RECORDS_CHANNEL = "duckmesh_records"
_MAX_DEFS = 10_000  # cached table definitions (per tenant, table and version)

_COPY = (
    "COPY bus_record (tenant_id, token, table_id, idempotency_key, payload_hash, op, payload,"
    " event_time, ingested_at, schema_version) FROM STDIN"
)


def _lock_counter(conn: Conn, tenant_id: str) -> tuple[int, dt.datetime]:
    sql = "SELECT last_token, now() FROM bus_token_counter WHERE tenant_id = %s FOR UPDATE"
    row = conn.execute(sql, (tenant_id,)).fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO bus_token_counter (tenant_id, last_token) VALUES (%s, 0)"
            " ON CONFLICT DO NOTHING",
            (tenant_id,),
        )
        conn.execute(
            "INSERT INTO bus_scope (scope) VALUES (%s) ON CONFLICT DO NOTHING", (tenant_id,)
        )
        row = conn.execute(sql, (tenant_id,)).fetchone()
        assert row is not None
    return int(row[0]), row[1]


def _existing_keys(
    conn: Conn, tenant_id: str, requests: Sequence[Sequence[IngestRecord]]
) -> dict[tuple[str, str], tuple[int, bytes]]:
    """(table, key) -> (token, hash) of the group's keys already stored.

    ``bus_row_key`` holds the keys of records and of upload rows (ADR 0014):
    record hashes are SHA-256, upload row hashes MD5, so reusing an upload
    row's key for a record never matches and is a conflict."""
    tables = [r.table_id for req in requests for r in req]
    keys = [r.idempotency_key for req in requests for r in req]
    rows = conn.execute(
        "SELECT b.table_id, b.idempotency_key, b.token, b.row_hash"
        " FROM unnest(%s::text[], %s::text[]) AS k(table_id, key)"
        " JOIN bus_row_key b ON b.tenant_id = %s AND b.table_id = k.table_id"
        " AND b.idempotency_key = k.key",
        (tables, keys, tenant_id),
    )
    return {(t, k): (tok, bytes.fromhex(h)) for t, k, tok, h in rows}


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    """Escape a value for COPY's text format."""
    return value.translate(_ESCAPES)


def _copy_line(tenant_id: str, token: int, rec: IngestRecord, stamp: str) -> str:
    """One COPY text-format line of a record kept as JSON."""
    event_time = rec.event_time.isoformat() if rec.event_time is not None else "\\N"
    return (
        f"{_text(tenant_id)}\t{token}\t{_text(rec.table_id)}\t{_text(rec.idempotency_key)}"
        f"\t\\\\x{rec.payload_hash.hex()}\t{rec.op}\t{_text(rec.payload)}\t{event_time}"
        f"\t{stamp}\t{rec.schema_version}\n"
    )


# Postgres holds instants Python cannot (4713 BC .. 294276 AD): such an
# event_time loads as NULL with a defect, so one record cannot fail the claim.
_TIME_OK = "event_time >= '0001-01-01 00:00:00+00' AND event_time < '10000-01-01 00:00:00+00'"
_CLAIM_RECORDS = (
    "SELECT token, table_id, op, payload,"
    f" CASE WHEN {_TIME_OK} THEN event_time END, ingested_at, schema_version,"
    f" CASE WHEN NOT ({_TIME_OK}) THEN 'event_time outside 0001-01-01..9999-12-31 UTC' END"
    " FROM bus_record WHERE tenant_id = %s AND token > %s AND token <= %s"
    " ORDER BY token LIMIT %s"
)


class PostgresBus:
    """``IngestBus`` on the catalog's Postgres (tables ``bus_*``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._defs: dict[tuple[str, str, int], TableDef] = {}

    # -- producers ---------------------------------------------------------

    def publish(
        self,
        tenant_id: str,
        requests: Sequence[Sequence[IngestRecord]],
        trace_ids: Sequence[str | None] | None = None,
    ) -> list[Receipts | DuckMeshError]:
        """One round trip when every record of the group is new (the common
        case): plan and encode, then one statement takes the tokens and
        writes keys and batches. Anything else — a duplicate, a conflict, a
        record kept as JSON, a key another request stored first, the
        tenant's first write — goes the locked way, on the same connection
        (ADR 0014). ``trace_ids`` (per request) go into the batches."""
        plan = record_batches.plan_group(requests, {}, 0)
        owned = record_batches.owners(plan, trace_ids)
        enc = None
        if plan.clean and all(
            (tenant_id, t, v) in self._defs for t, v in record_batches.tables(plan.new)
        ):
            enc = record_batches.encode(plan.new, lambda t, v: self._table(tenant_id, t, v), owned)

        def run(conn: Conn) -> list[Receipts | DuckMeshError]:
            if plan.clean:
                found = self._publish_new(conn, tenant_id, plan, enc, owned)
                if found is not None:
                    return found
            with conn.transaction():
                return self._publish(conn, tenant_id, requests, trace_ids)

        return self.db.call(run, transaction=False)

    def _publish_new(
        self,
        conn: Conn,
        tenant_id: str,
        plan: record_batches.GroupPlan,
        enc: record_batches.Encoded | None,
        owned: record_batches.Owners,
    ) -> list[Receipts | DuckMeshError] | None:
        """The one-statement write of a group of new records, or None when it
        must go the locked way (nothing was written then)."""
        if enc is None:
            enc = record_batches.encode(
                plan.new, lambda t, v: self._table(tenant_id, t, v, conn), owned
            )
        if enc.fallback:
            return None
        try:
            # Alone in autocommit the statement is its own transaction; inside
            # one (a caller's), a savepoint keeps a failure from aborting it.
            in_tx = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            with conn.transaction() if in_tx else contextlib.nullcontext():
                written = record_batches.insert(
                    conn, tenant_id, enc, len(plan.new), RECORDS_CHANNEL
                )
        except psycopg.errors.UniqueViolation:
            return None  # a key stored meanwhile: decide with the counter locked
        if written is None:
            return None
        return record_batches.rebased(plan, written[0])

    def _publish(
        self,
        conn: Conn,
        tenant_id: str,
        requests: Sequence[Sequence[IngestRecord]],
        trace_ids: Sequence[str | None] | None,
    ) -> list[Receipts | DuckMeshError]:
        last, now = _lock_counter(conn, tenant_id)
        # With the counter locked no other ingest of this tenant can commit,
        # so this read of existing keys cannot miss a concurrent duplicate.
        existing = _existing_keys(conn, tenant_id, requests)
        plan = record_batches.plan_group(requests, existing, last)
        if plan.new:
            enc = record_batches.encode(
                plan.new,
                lambda t, v: self._table(tenant_id, t, v, conn),
                record_batches.owners(plan, trace_ids),
            )
            if enc.fallback:
                stamp = now.isoformat()
                lines = [_copy_line(tenant_id, last + off, rec, stamp) for off, rec in enc.fallback]
                with conn.cursor().copy(_COPY) as copy:
                    copy.write("".join(lines).encode())
            written = record_batches.insert(conn, tenant_id, enc, len(plan.new), RECORDS_CHANNEL)
            assert written is not None
            assert written[0] == last  # the counter was locked at `last`
        return plan.results

    def _table(
        self, tenant_id: str, table_id: str, version: int, conn: Conn | None = None
    ) -> TableDef | None:
        """A table's definition for records validated at ``version`` (its
        current one, cached per version seen: definitions never change)."""
        key = (tenant_id, table_id, version)
        found = self._defs.get(key)
        if found is None:

            def fetch(c: Conn) -> dict[str, TableDef]:
                return reads.tables_by_id(c, tenant_id, [table_id])

            tables = fetch(conn) if conn is not None else self.db.call(fetch, transaction=False)
            found = tables.get(table_id)
            if found is None:
                return None
            if len(self._defs) >= _MAX_DEFS:
                self._defs.clear()
            self._defs[key] = found
        return found

    def publish_upload(self, tenant_id: str, upload: UploadRequest) -> UploadReceipt:
        return self.db.call(lambda conn: self._publish_upload(conn, tenant_id, upload))

    def _publish_upload(self, conn: Conn, tenant_id: str, upload: UploadRequest) -> UploadReceipt:
        last, now = _lock_counter(conn, tenant_id)
        receipt, token = batches.publish_upload(conn, tenant_id, upload, last, now)
        if token != last:
            self._bump(conn, tenant_id, token)
        return receipt

    def upload_receipt(
        self, tenant_id: str, table_id: str, key: str, content_hash: bytes
    ) -> UploadReceipt | None:
        return self.db.call(
            lambda conn: batches.prior_upload(conn, tenant_id, table_id, key, content_hash),
            transaction=False,
        )

    @staticmethod
    def _bump(conn: Conn, tenant_id: str, token: int) -> None:
        conn.execute(
            "WITH bumped AS (UPDATE bus_token_counter SET last_token = %s"
            " WHERE tenant_id = %s RETURNING last_token)"
            " SELECT pg_notify(%s, %s) FROM bumped",
            (token, tenant_id, RECORDS_CHANNEL, f"{tenant_id}:{token}"),
        )

    # -- consumers ---------------------------------------------------------

    def claim(
        self, consumer_id: str, *, limit: int, max_bytes: int, lease_s: float
    ) -> Batch | None:
        # One statement takes the scope (atomic on its own); the reads after it
        # are of rows that never change, pipelined: three round trips, not six.
        return self.db.call(
            lambda conn: self._claim(conn, consumer_id, limit, max_bytes, lease_s),
            transaction=False,
            pipeline=True,
        )

    def _claim(
        self, conn: Conn, consumer_id: str, limit: int, max_bytes: int, lease_s: float
    ) -> Batch | None:
        row = conn.execute(
            "WITH candidate AS ("
            "  SELECT s.scope, c.last_token FROM bus_scope s"
            "  JOIN bus_token_counter c ON c.tenant_id = s.scope"
            "  WHERE c.last_token > s.acked_token"
            # A nacked scope may carry a back-off: owner NULL, lease_until ahead.
            "    AND (s.lease_until IS NULL OR s.lease_until < now() OR s.owner = %(me)s)"
            "  ORDER BY (s.owner IS NOT DISTINCT FROM %(me)s) DESC, s.lease_until NULLS FIRST"
            "  LIMIT 1 FOR UPDATE OF s SKIP LOCKED)"
            " UPDATE bus_scope s SET owner = %(me)s,"
            "   lease_until = now() + make_interval(secs => %(lease)s),"
            "   fence = CASE WHEN s.owner IS NOT DISTINCT FROM %(me)s THEN s.fence"
            "                ELSE s.fence + 1 END"
            " FROM candidate WHERE s.scope = candidate.scope"
            " RETURNING s.scope, s.fence, s.acked_token, candidate.last_token",
            {"me": consumer_id, "lease": lease_s},
        ).fetchone()
        if row is None:
            return None
        scope, fence, acked, last = row
        records_cur = conn.execute(_CLAIM_RECORDS, (scope, acked, last, limit))
        heads_cur = batches.claim_heads(conn, scope, acked, last)
        rows, heads = records_cur.fetchall(), heads_cur.fetchall()
        records, uploads = batches.claim_uploads(conn, scope, acked, rows, heads, limit, max_bytes)
        return Batch(scope, consumer_id, fence, acked, tuple(records), tuple(uploads))

    def ack(self, batch: Batch, *, tx: Any = None) -> None:
        """Advance the committed position; ``tx`` is a psycopg connection in a transaction."""
        if tx is None:
            self.db.call(lambda conn: self._ack(conn, batch))
        else:
            self._ack(tx, batch)

    def _ack(self, conn: Conn, batch: Batch) -> None:
        # RETURNING, not the row count: a row count is not known yet in a
        # pipeline (a commit publishes in one, ``Database.call(pipeline=True)``).
        row = conn.execute(
            "UPDATE bus_scope SET acked_token = %s"
            " WHERE scope = %s AND owner = %s AND fence = %s AND acked_token = %s"
            " RETURNING scope",
            (
                batch.last_token,
                batch.scope,
                batch.consumer_id,
                batch.fence,
                batch.after_token,
            ),
        ).fetchone()
        if row is None and not unsafe.broken("no_fencing"):  # TEST ONLY: stale acks pass
            raise LeaseLost(batch.scope, batch.fence)

    def nack(self, batch: Batch, reason: str, *, retry_after_s: float = 0.0) -> None:
        """Give the scope back without advancing; a claim redoes it, not before
        ``retry_after_s`` (the owner is cleared, so no one holds it meanwhile)."""
        self.db.call(
            lambda conn: conn.execute(
                "UPDATE bus_scope SET owner = NULL, lease_until = CASE WHEN %s > 0"
                " THEN now() + make_interval(secs => %s) END"
                " WHERE scope = %s AND owner = %s AND fence = %s",
                (retry_after_s, retry_after_s, batch.scope, batch.consumer_id, batch.fence),
            )
        )

    def extend_lease(self, batch: Batch, lease_s: float) -> None:
        def run(conn: Conn) -> None:
            cur = conn.execute(
                "UPDATE bus_scope SET lease_until = now() + make_interval(secs => %s)"
                " WHERE scope = %s AND owner = %s AND fence = %s",
                (lease_s, batch.scope, batch.consumer_id, batch.fence),
            )
            if cur.rowcount != 1:
                raise LeaseLost(batch.scope, batch.fence)

        self.db.call(run)

    def requeue_expired(self) -> int:
        def run(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE bus_scope SET owner = NULL, lease_until = NULL"
                " WHERE owner IS NOT NULL AND lease_until < now()"
            )
            return cur.rowcount

        return self.db.call(run)

    def release(self, consumer_id: str) -> int:
        def run(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE bus_scope SET owner = NULL, lease_until = NULL WHERE owner = %s",
                (consumer_id,),
            )
            return cur.rowcount

        return self.db.call(run)

    def latest_token(self, tenant_id: str) -> int:
        row = self.db.call(
            lambda conn: conn.execute(
                "SELECT last_token FROM bus_token_counter WHERE tenant_id = %s", (tenant_id,)
            ).fetchone(),
            transaction=False,
        )
        return int(row[0]) if row else 0

    def committed_token(self, tenant_id: str) -> int:
        row = self.db.call(
            lambda conn: conn.execute(
                "SELECT acked_token FROM bus_scope WHERE scope = %s", (tenant_id,)
            ).fetchone(),
            transaction=False,
        )
        return int(row[0]) if row else 0

    def prune(self, tenant_id: str, *, window_s: float, chunk_tokens: int) -> BusPrune:
        return retention.prune(self.db, tenant_id, window_s=window_s, chunk_tokens=chunk_tokens)

    def retained(self, tenant_id: str) -> BusRetained:
        return retention.retained(self.db, tenant_id)

    def advance_tokens(self, tenant_id: str, gap: int, *, tx: Any = None) -> TokenJump:
        def run(conn: Conn) -> TokenJump:
            last, _ = _lock_counter(conn, tenant_id)
            return restore.advance_tokens(conn, tenant_id, last, gap)

        return run(tx) if tx is not None else self.db.call(run)

    def lag(self) -> dict[str, tuple[int, int]]:
        """tenant -> (latest token, committed token)."""
        rows = self.db.call(
            lambda conn: conn.execute(
                "SELECT c.tenant_id, c.last_token, coalesce(s.acked_token, 0)"
                " FROM bus_token_counter c LEFT JOIN bus_scope s ON s.scope = c.tenant_id"
            ).fetchall(),
            transaction=False,
        )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def ingested_at(self, tokens: dict[str, int]) -> dict[str, dt.datetime]:
        """When each tenant's record or batch row ``tokens[tenant]`` was made durable."""
        rows = self.db.call(
            lambda conn: conn.execute(
                "SELECT r.tenant_id, r.ingested_at FROM unnest(%s::text[], %s::bigint[])"
                " AS k(tenant_id, token) JOIN bus_record r USING (tenant_id, token)"
                " UNION ALL SELECT k.tenant_id, b.ingested_at"
                " FROM unnest(%s::text[], %s::bigint[]) AS k(tenant_id, token)"
                " JOIN LATERAL (SELECT ingested_at, last_token FROM bus_batch b"
                " WHERE b.tenant_id = k.tenant_id AND b.first_token <= k.token"
                " ORDER BY b.first_token DESC LIMIT 1) b ON b.last_token >= k.token",
                (list(tokens), list(tokens.values()), list(tokens), list(tokens.values())),
            ).fetchall(),
            transaction=False,
        )
        return {r[0]: r[1] for r in rows}

    def quarantine(
        self, batch: Batch, entries: Sequence[QuarantineEntry], *, tx: Any = None
    ) -> None:
        """Set records aside; ``tx`` is a psycopg connection in a transaction."""
        if not entries:
            return

        def run(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bus_quarantine (tenant_id, token, table_id, reason)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(batch.scope, e.token, e.table_id, e.reason) for e in entries],
                )

        if tx is None:
            self.db.call(run)
        else:
            run(tx)

    def quarantined(self, tenant_id: str, recent: int = 10) -> tuple[int, list[dict[str, Any]]]:
        """How many records of a tenant were set aside, and the latest reasons."""

        def run(conn: Conn) -> tuple[int, list[dict[str, Any]]]:
            row = conn.execute(
                "SELECT count(*) FROM bus_quarantine WHERE tenant_id = %s", (tenant_id,)
            ).fetchone()
            latest = conn.execute(
                "SELECT q.token, q.table_id, q.reason, q.quarantined_at, k.idempotency_key"
                " FROM bus_quarantine q LEFT JOIN bus_row_key k"
                " ON k.tenant_id = q.tenant_id AND k.token = q.token"
                " WHERE q.tenant_id = %s ORDER BY q.token DESC LIMIT %s",
                (tenant_id, recent),
            ).fetchall()
            return int(row[0]) if row else 0, [
                {
                    "token": t,
                    "table_id": table,
                    "reason": reason,
                    "at": at.isoformat(),
                    "idempotency_key": key,
                }
                for t, table, reason, at, key in latest
            ]

        return self.db.call(run, transaction=False)
