"""The ``IngestBus`` contract for ``PostgresBus``, plus what only Postgres can show."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest

from duckmesh.bus.postgres import PostgresBus
from duckmesh.bus.protocol import IngestBus
from duckmesh.db import Database
from tests.bus.contract import IngestBusContract, ok, rec


class TestPostgresBusContract(IngestBusContract):
    @pytest.fixture
    def make_bus(self, dsn: str) -> Iterator[Callable[[], IngestBus]]:
        made: list[Database] = []

        def make() -> IngestBus:
            db = Database(dsn, size=4)
            made.append(db)
            return PostgresBus(db)

        yield make
        for db in made:
            db.close()


@pytest.fixture
def pg_bus(dsn: str) -> Iterator[PostgresBus]:
    db = Database(dsn, size=4)
    try:
        yield PostgresBus(db)
    finally:
        db.close()


def test_ack_joins_the_callers_transaction(pg_bus: PostgresBus, dsn: str) -> None:
    """With ``tx`` the ack commits or rolls back with the catalog publication."""
    ok(pg_bus.publish("acme", [[rec("a"), rec("b")]])[0])
    batch = pg_bus.claim("A", limit=10, max_bytes=1 << 20, lease_s=60)
    assert batch is not None

    with psycopg.connect(dsn, autocommit=True) as conn:

        def publication_fails_after_ack() -> None:
            with conn.transaction():
                pg_bus.ack(batch, tx=conn)
                raise psycopg.Rollback  # the ack is rolled back with the publication

        publication_fails_after_ack()
        assert pg_bus.committed_token("acme") == 0
        with conn.transaction():
            pg_bus.ack(batch, tx=conn)
    assert pg_bus.committed_token("acme") == 2


def test_records_are_stored_once_with_their_receipt_token(pg_bus: PostgresBus, dsn: str) -> None:
    out = pg_bus.publish("acme", [[rec("a"), rec("b")], [rec("a"), rec("c")]])
    assert [[r.token for r in ok(x)] for x in out] == [[1, 2], [1, 3]]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, token FROM bus_row_key WHERE tenant_id = 'acme' ORDER BY token"
        ).fetchall()
    assert rows == [("a", 1), ("b", 2), ("c", 3)]


def test_a_nack_with_a_back_off_lets_other_scopes_go_first(pg_bus: PostgresBus) -> None:
    """A failing tenant's scope is not claimed again before its back-off ends,
    by anyone; the other scopes are claimed meanwhile."""
    ok(pg_bus.publish("failing", [[rec("a")]])[0])
    batch = pg_bus.claim("A", limit=10, max_bytes=1 << 20, lease_s=60)
    assert batch is not None
    assert batch.scope == "failing"
    pg_bus.nack(batch, "commit failed", retry_after_s=3600)
    ok(pg_bus.publish("healthy", [[rec("b")]])[0])
    for consumer in ("A", "B"):
        other = pg_bus.claim(consumer, limit=10, max_bytes=1 << 20, lease_s=60)
        assert other is not None
        assert other.scope == "healthy"
        pg_bus.nack(other, "test")  # no back-off: claimable again at once
    assert pg_bus.claim("C", limit=10, max_bytes=1 << 20, lease_s=60) is not None
    retried = pg_bus.claim("D", limit=10, max_bytes=1 << 20, lease_s=60)
    assert retried is None  # "healthy" is leased by C now; "failing" still backs off
