"""``Database.call(pipeline=True)``: one transaction sent as a pipeline
(BEGIN and COMMIT queued), all or nothing, on a real Postgres."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from duckmesh.db import Conn, Database


@pytest.fixture
def db(dsn: str) -> Database:
    database = Database(dsn, size=1, name=f"t-{secrets.token_hex(4)}")
    database.call(lambda c: c.execute("CREATE TABLE IF NOT EXISTS pipe_t (k int PRIMARY KEY)"))
    database.call(lambda c: c.execute("DELETE FROM pipe_t"))
    return database


def _keys(db: Database) -> list[int]:
    return db.call(lambda c: [r[0] for r in c.execute("SELECT k FROM pipe_t ORDER BY k")])


def test_statements_commit_together_and_reads_see_earlier_writes(db: Database) -> None:
    def work(conn: Conn) -> int:
        conn.execute("INSERT INTO pipe_t VALUES (1)")
        conn.execute("INSERT INTO pipe_t VALUES (2)")
        row = conn.execute("SELECT count(*) FROM pipe_t").fetchone()
        assert row is not None
        return int(row[0])

    assert db.call(work, pipeline=True) == 2
    assert _keys(db) == [1, 2]


def test_an_error_raised_after_queued_writes_leaves_nothing(db: Database) -> None:
    class Refused(Exception):
        pass

    def work(conn: Conn) -> None:
        conn.execute("INSERT INTO pipe_t VALUES (1)")
        raise Refused

    with pytest.raises(Refused):
        db.call(work, pipeline=True)
    assert _keys(db) == []  # and the connection went back to the pool usable


def test_a_failing_statement_fails_the_call_and_leaves_nothing(db: Database) -> None:
    def work(conn: Conn) -> None:
        conn.execute("INSERT INTO pipe_t VALUES (1)")
        conn.execute("INSERT INTO pipe_t VALUES (1)")  # fails at the commit's sync

    with pytest.raises(psycopg.errors.UniqueViolation):
        db.call(work, pipeline=True)
    assert _keys(db) == []
