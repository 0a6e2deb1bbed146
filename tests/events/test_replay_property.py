"""Replay: the projections always equal a replay of the event log (SPEC 2.2, 5).

The property test drives generated catalog command sequences (tenants, keys,
tables and their evolutions, made-up snapshots, pins, maintenance events)
through the real command layer on a real Postgres, then checks that
``verify`` finds no difference, that ``rebuild`` leaves every projection row
as it was, and that a second replay still verifies. The negative tests
corrupt a projection row by hand and check that ``verify`` and the CLI
report it and ``rebuild`` repairs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from psycopg import sql

from duckmesh import events
from duckmesh.catalog import commands
from duckmesh.cli.main import main
from duckmesh.projections import PROJECTION_TABLES, replay
from tests.strategies import (
    CatalogModel,
    Command,
    apply_commands,
    assert_catalog_matches,
    catalog_commands,
)

Conn = psycopg.Connection[Any]


def reset(conn: Conn) -> None:
    """Empty the log and every projection (cheaper than a new database)."""
    tables = ["event_log", "event_stream", *PROJECTION_TABLES]
    conn.execute(
        sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in tables)
        )
    )


def dump(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection row, in a stable order."""
    out = {}
    for table in PROJECTION_TABLES:
        rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))).fetchall()
        out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


def differences(diffs: list[replay.TableDiff]) -> list[replay.TableDiff]:
    return [d for d in diffs if not d.equal]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(cmds=catalog_commands(max_size=30))
def test_projections_equal_a_replay_of_the_log(conn: Conn, cmds: list[Command]) -> None:
    reset(conn)
    applied = apply_commands(conn, cmds)
    assert_catalog_matches(conn, CatalogModel.after(cmds), applied)

    assert differences(replay.verify(conn)) == []
    before = dump(conn)
    assert replay.rebuild(conn) == events.count(conn)
    assert dump(conn) == before
    # Replaying again (the log is unchanged) still agrees: replay is idempotent.
    assert differences(replay.verify(conn)) == []
    assert replay.rebuild(conn) == events.count(conn)
    assert dump(conn) == before


def test_replay_of_an_empty_log(conn: Conn) -> None:
    diffs = replay.verify(conn)
    assert [d.table for d in diffs] == list(PROJECTION_TABLES)
    assert differences(diffs) == []
    assert replay.rebuild(conn) == 0


def test_verify_progress_is_reported(conn: Conn) -> None:
    with conn.transaction():
        for n in range(3):
            commands.create_tenant(conn, f"t{n}")
    seen: list[int] = []
    replay.verify(conn, progress=seen.append)
    assert seen == []  # reported every 500 events; three are too few
    for n in range(3, 501):
        with conn.transaction():
            commands.create_tenant(conn, f"t{n}")
    replay.verify(conn, progress=seen.append)
    assert seen == [500]


def _corrupt(conn: Conn) -> None:
    with conn.transaction():
        commands.create_tenant(conn, "acme", "Acme Inc")
        commands.create_tenant(conn, "globex", "Globex")
    conn.execute("UPDATE tenant SET name = 'x' WHERE tenant_id = 'acme'")


def test_verify_reports_a_corrupted_row(conn: Conn) -> None:
    _corrupt(conn)
    diffs = {d.table: d for d in replay.verify(conn)}
    bad = diffs["tenant"]
    assert not bad.equal
    assert bad.live_rows == bad.replay_rows == 2
    assert [row[:3] for row in bad.only_live] == [("acme", "x", "active")]
    assert [row[:3] for row in bad.only_replay] == [("acme", "Acme Inc", "active")]
    assert all(d.equal for name, d in diffs.items() if name != "tenant")


def test_verify_reports_missing_and_extra_rows(conn: Conn) -> None:
    with conn.transaction():
        commands.create_tenant(conn, "acme")
        commands.issue_key(conn, "acme", ["query_reader"])
    conn.execute("DELETE FROM api_key")
    conn.execute(
        "INSERT INTO tenant (tenant_id, name, status, created_at) VALUES ('ghost', 'g', 'active',"
        " now())"
    )
    diffs = {d.table: d for d in replay.verify(conn)}
    assert (diffs["api_key"].live_rows, diffs["api_key"].replay_rows) == (0, 1)
    assert len(diffs["api_key"].only_replay) == 1
    assert [r[0] for r in diffs["tenant"].only_live] == ["ghost"]
    assert diffs["tenant"].only_replay == []
    replay.rebuild(conn)
    assert differences(replay.verify(conn)) == []
    assert conn.execute("SELECT tenant_id FROM tenant").fetchall() == [("acme",)]


def test_rebuild_repairs_a_corrupted_row(conn: Conn) -> None:
    _corrupt(conn)
    assert replay.rebuild(conn) == 2
    assert differences(replay.verify(conn)) == []
    names = conn.execute("SELECT tenant_id, name FROM tenant ORDER BY 1").fetchall()
    assert names == [("acme", "Acme Inc"), ("globex", "Globex")]


def test_verify_leaves_no_scratch_schema(conn: Conn) -> None:
    _corrupt(conn)
    replay.verify(conn)
    replay.rebuild(conn)
    schemas = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'duckmesh_replay%'"
    ).fetchall()
    assert schemas == []


def test_rebuild_refuses_while_the_log_is_locked(conn: Conn, dsn: str) -> None:
    _corrupt(conn)
    with psycopg.connect(dsn) as writer:
        writer.execute("LOCK TABLE event_stream IN ROW EXCLUSIVE MODE")  # an append in flight
        with pytest.raises(replay.ReplayRefused):
            replay.rebuild(conn, lock_timeout_ms=100)
        writer.rollback()
    # Nothing was replaced: the corruption is still there, and then repaired.
    assert differences(replay.verify(conn))
    replay.rebuild(conn)
    assert differences(replay.verify(conn)) == []


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, dsn: str, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DUCKMESH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", dsn)
    monkeypatch.setenv("DUCKMESH_DATA_DIR", str(tmp_path / "data"))


@pytest.mark.usefixtures("cli_env")
def test_cli_verify_exits_1_with_the_diff_and_rebuild_fixes_it(
    conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    _corrupt(conn)
    assert main(["replay", "verify"]) == 1
    out = capsys.readouterr().out
    assert "DIFF tenant" in out
    assert "only in live:   ('acme', 'x', 'active'" in out
    assert "only in replay: ('acme', 'Acme Inc', 'active'" in out
    assert "1 table(s) differ" in out
    assert "ok   api_key" in out

    assert main(["replay", "rebuild"]) == 0
    assert "rebuilt projections from 2 events" in capsys.readouterr().out

    assert main(["replay", "verify"]) == 0
    out = capsys.readouterr().out
    assert "DIFF" not in out
    assert "replayed 2 events: projections equal the log" in out


@pytest.mark.usefixtures("cli_env")
def test_cli_verify_exits_0_on_a_clean_catalog(
    conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    with conn.transaction():
        commands.create_tenant(conn, "acme")
        commands.issue_key(conn, "acme", ["ingest_writer"])
    assert main(["replay", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == len(PROJECTION_TABLES)
    assert "replayed 2 events: projections equal the log" in out


def test_verify_sees_a_consistent_view_while_writers_append(conn: Conn, dsn: str) -> None:
    """verify does not block writers, and never reports a half-seen append."""
    import threading

    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                n = 0
                while not stop.is_set():
                    with c.transaction():
                        commands.create_tenant(c, f"w{n}")
                        commands.issue_key(c, f"w{n}", ["query_reader"])
                    n += 1
                    written.append(n)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            assert differences(replay.verify(conn)) == []
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert written  # the writer made progress while verify ran
    assert differences(replay.verify(conn)) == []
