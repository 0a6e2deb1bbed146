"""subscribe(): catch up from a position, then follow new events as they land."""

from __future__ import annotations

import threading

import psycopg

from duckmesh.catalog import commands
from duckmesh.events import subscribe


def test_catch_up_then_follow(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        commands.create_tenant(conn, "a")
    seen: list[str] = []
    got_three = threading.Event()
    done = threading.Event()

    def follow() -> None:
        for rec in subscribe(dsn, 0, poll_s=0.2, stop=done.is_set):
            seen.append(rec.event.event_type)
            if len(seen) == 3:
                got_three.set()

    reader = threading.Thread(target=follow)
    reader.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            commands.issue_key(conn, "a", ["query_reader"])
        with conn.transaction():
            commands.disable_tenant(conn, "a")
    assert got_three.wait(10)
    done.set()
    reader.join(10)
    assert seen == ["TenantCreated", "ApiKeyIssued", "TenantDisabled"]
