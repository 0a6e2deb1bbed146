"""Versioned catalog migrations: ``sql/NNNN_name.up.sql`` and ``.down.sql``.

Each migration runs in its own transaction under an advisory lock, so two
processes starting at once apply it exactly once. Applied versions are
recorded in ``schema_migrations``; ``/v1/ready`` compares them with the files.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import attrs
import psycopg

from duckmesh.errors import DuckMeshError

_LOCK_ID = 0x4455434B  # "DUCK"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.up\.sql$")


@attrs.frozen
class Migration:
    version: int
    name: str
    up: str
    down: str


def available() -> list[Migration]:
    folder = resources.files(__package__).joinpath("sql")
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        down_name = entry.name.replace(".up.sql", ".down.sql")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                up=entry.read_text(),
                down=folder.joinpath(down_name).read_text(),
            )
        )
    return sorted(found, key=lambda m: m.version)


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )


def applied(conn: psycopg.Connection[Any]) -> list[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def pending(conn: psycopg.Connection[Any]) -> list[Migration]:
    done = set(applied(conn))
    return [m for m in available() if m.version not in done]


def migrate_up(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        _ensure_table(conn)
        for migration in pending(conn):
            conn.execute(migration.up)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration)
    return done


def migrate_down(conn: psycopg.Connection[Any], steps: int = 1) -> list[Migration]:
    """Revert the newest ``steps`` migrations (at least one)."""
    if steps < 1:
        # A negative slice would revert all but the oldest -steps migrations.
        raise DuckMeshError("BAD_REQUEST", f"steps must be at least 1, not {steps}")
    by_version = {m.version: m for m in available()}
    reverted: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        for version in sorted(applied(conn), reverse=True)[:steps]:
            migration = by_version[version]
            conn.execute(migration.down)
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (version,))
            reverted.append(migration)
    return reverted


def is_current(conn: psycopg.Connection[Any]) -> bool:
    return not pending(conn)
