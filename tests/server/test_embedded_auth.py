"""The embedded Postgres requires its password (issue 14, hole 5): SCRAM
authentication, the password kept 0600 in the data directory, ``pg_hba.conf``
without ``trust``; a data directory made with ``trust`` is upgraded on start."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from duckmesh.config import redact_dsn
from duckmesh.embedded import PASSWORD_FILE, EmbeddedPostgres

pytestmark = pytest.mark.slow


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The Unix socket lives in the data directory: keep the path short.
    path = Path(tempfile.mkdtemp(prefix="dmea"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _without_password(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    params.pop("password")
    return make_conninfo(**params)  # type: ignore[arg-type]


def _stop(embedded: EmbeddedPostgres) -> None:
    embedded.adopted = False  # this test owns the server, whoever started it
    embedded.stop()


def _assert_password_required(embedded: EmbeddedPostgres, dsn: str) -> None:
    password = (embedded.data_dir / PASSWORD_FILE).read_text().strip()
    assert len(password) >= 32
    assert conninfo_to_dict(dsn)["password"] == password
    assert password not in redact_dsn(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_without_password(dsn))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(make_conninfo(dsn, password="wrong"))
    rules = (embedded.pgdata / "pg_hba.conf").read_text()
    methods = {line.split()[-1] for line in rules.splitlines() if line and line[0] != "#"}
    assert methods == {"scram-sha-256"}
    assert stat.S_IMODE((embedded.data_dir / PASSWORD_FILE).stat().st_mode) == 0o600
    # 0700, or traverse-only when root runs Postgres as pgserver's own user.
    assert stat.S_IMODE(embedded.data_dir.stat().st_mode) in (0o700, 0o711)


def test_a_new_data_directory_requires_the_password(short_dir: Path) -> None:
    embedded = EmbeddedPostgres(short_dir / "data")
    dsn = embedded.start()
    try:
        _assert_password_required(embedded, dsn)
        # A second process (a CLI command) adopts the server with the same password.
        again = EmbeddedPostgres(short_dir / "data").start()
        assert conninfo_to_dict(again)["password"] == conninfo_to_dict(dsn)["password"]
    finally:
        _stop(embedded)


def test_a_running_trust_server_of_an_old_version_is_upgraded(short_dir: Path) -> None:
    pgdata = short_dir / "data" / "pg"
    pgdata.parent.mkdir()
    # What DuckMesh before this change left behind: pgserver's trust cluster,
    # still running (started by another process that has exited).
    subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "import sys, pgserver; pgserver.get_server(sys.argv[1], cleanup_mode=None)",
            str(pgdata),
        ],
        check=True,
        timeout=120,
    )
    assert "trust" in (pgdata / "pg_hba.conf").read_text()
    embedded = EmbeddedPostgres(short_dir / "data")
    dsn = embedded.start()
    try:
        assert embedded.adopted
        with psycopg.connect(dsn) as conn:  # the old data is still there
            conn.execute("SELECT 1")
        _assert_password_required(embedded, dsn)
    finally:
        _stop(embedded)
