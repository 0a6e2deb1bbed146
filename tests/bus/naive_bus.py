"""TEST-ONLY negative control: a deliberately WRONG token source. Never use it.

``NaiveSequenceBus`` is ``PostgresBus`` with the one thing SPEC §2.3 forbids:
tokens come from a Postgres sequence (``nextval``) with no per-tenant counter
row lock, and every request commits on its own. Sequence values are handed
out before commit, so transactions can commit out of token order: a reader
may see token ``n + 1`` committed while ``n`` is still missing. The race
tests run their watermark observer against it to prove the observer can
detect exactly that (a race test that cannot fail proves nothing).

It keeps its records in its own table (``naive_bus_record``), created by
``install`` in the test's database; only the producer side is implemented.

Also here: ``HeldOpenDatabase``, a ``Database`` whose transactions stop just
before COMMIT until the test lets them go, to build interleavings by hand, and
``WatermarkObserver``, the reader whose property the race tests check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import psycopg

from duckmesh.bus.postgres import PostgresBus
from duckmesh.bus.protocol import Batch, IngestRecord, Receipt, Receipts
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError

T = TypeVar("T")

NAIVE_TABLE = "naive_bus_record"
NAIVE_SEQUENCE = "naive_bus_token_seq"


class _Conflict(Exception):
    def __init__(self, error: DuckMeshError) -> None:
        self.error = error


class NaiveSequenceBus(PostgresBus):
    """NEGATIVE CONTROL (tests only): tokens from ``nextval``, no counter-row lock."""

    record_table = NAIVE_TABLE

    @staticmethod
    def install(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {NAIVE_SEQUENCE}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {NAIVE_TABLE} ("
                " tenant_id text NOT NULL, token bigint NOT NULL, table_id text NOT NULL,"
                " idempotency_key text NOT NULL, payload_hash bytea NOT NULL,"
                " op text NOT NULL, payload text NOT NULL,"
                " PRIMARY KEY (tenant_id, token),"
                " UNIQUE (tenant_id, table_id, idempotency_key))"
            )

    def publish(
        self,
        tenant_id: str,
        requests: Sequence[Sequence[IngestRecord]],
        trace_ids: Sequence[str | None] | None = None,
    ) -> list[Receipts | DuckMeshError]:
        results: list[Receipts | DuckMeshError] = []
        for request in requests:  # one independent transaction per request

            def run(conn: Conn, request: Sequence[IngestRecord] = request) -> list[Receipt]:
                return self._publish_one(conn, tenant_id, request)

            try:
                results.append(self.db.call(run))
            except _Conflict as exc:
                results.append(exc.error)
        return results

    def _publish_one(
        self, conn: Conn, tenant_id: str, request: Sequence[IngestRecord]
    ) -> list[Receipt]:
        receipts: list[Receipt] = []
        for rec in request:
            prior = conn.execute(
                f"SELECT token, payload_hash FROM {NAIVE_TABLE}"
                " WHERE tenant_id = %s AND table_id = %s AND idempotency_key = %s",
                (tenant_id, rec.table_id, rec.idempotency_key),
            ).fetchone()
            if prior is not None:
                if bytes(prior[1]) != rec.payload_hash:
                    raise _Conflict(DuckMeshError("IDEMPOTENCY_CONFLICT", "key reused"))
                receipts.append(Receipt(int(prior[0]), True))
                continue
            # The flaw under test: the value exists before this transaction commits.
            row = conn.execute(f"SELECT nextval('{NAIVE_SEQUENCE}')").fetchone()
            assert row is not None
            token = int(row[0])
            conn.execute(
                f"INSERT INTO {NAIVE_TABLE} (tenant_id, token, table_id, idempotency_key,"
                " payload_hash, op, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    tenant_id,
                    token,
                    rec.table_id,
                    rec.idempotency_key,
                    rec.payload_hash,
                    rec.op,
                    rec.payload,
                ),
            )
            receipts.append(Receipt(token, False))
        return receipts

    def latest_token(self, tenant_id: str) -> int:
        """The highest committed token: what a reader of this scheme takes as "latest"."""
        row = self.db.call(
            lambda conn: conn.execute(
                f"SELECT coalesce(max(token), 0) FROM {NAIVE_TABLE} WHERE tenant_id = %s",
                (tenant_id,),
            ).fetchone(),
            transaction=False,
        )
        assert row is not None
        return int(row[0])

    # The consumer side is out of scope for the negative control.
    def claim(
        self, consumer_id: str, *, limit: int, max_bytes: int, lease_s: float
    ) -> Batch | None:
        raise NotImplementedError("NaiveSequenceBus is a producer-side negative control")


class HeldOpenDatabase(Database):
    """A ``Database`` whose next transaction waits before COMMIT until ``release`` is set.

    ``entered`` is set once the transaction's work is done (locks taken, rows
    written) and it is about to commit.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, size=2)
        self.entered = threading.Event()
        self.release = threading.Event()

    def call(
        self, fn: Callable[[Conn], T], *, transaction: bool = True, pipeline: bool = False
    ) -> T:
        def held(conn: Conn) -> T:
            result = fn(conn)
            self.entered.set()
            if not self.release.wait(30):
                raise TimeoutError("the test never released the held transaction")
            return result

        return super().call(held)


@attrs.frozen
class Observation:
    observed: int  # the "latest committed token" the reader was told
    present: frozenset[int]  # committed tokens <= observed, read right after

    @property
    def missing(self) -> set[int]:
        """Tokens at or below the watermark that a reader would miss. Must be empty."""
        return set(range(1, self.observed + 1)) - self.present


class WatermarkObserver:
    """Reads the latest token, then the committed tokens up to it (two statements)."""

    def __init__(self, dsn: str, bus: PostgresBus, tenant_id: str, record_table: str) -> None:
        self.bus = bus
        self.tenant_id = tenant_id
        self.record_table = record_table
        self.conn: Conn = psycopg.connect(dsn, autocommit=True)

    def observe(self) -> Observation:
        observed = self.bus.latest_token(self.tenant_id)
        rows: list[Any] = self.conn.execute(
            f"SELECT token FROM {self.record_table} WHERE tenant_id = %s AND token <= %s",
            (self.tenant_id, observed),
        ).fetchall()
        return Observation(observed, frozenset(int(r[0]) for r in rows))

    def close(self) -> None:
        self.conn.close()
