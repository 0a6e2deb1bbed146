"""The embedded Postgres of the single-node default (ADR 0004).

Without ``DUCKMESH_CATALOG_DSN`` DuckMesh starts a real Postgres from the
``pgserver`` wheel inside ``DUCKMESH_DATA_DIR/pg``, listening only on a Unix
socket in that directory, and stops it on shutdown. A server left running by
a crashed process is reused, not duplicated; ``duckmesh serve`` (the owner:
it holds the data-directory lock, see duckmesh.lifecycle) also stops such a
leftover on shutdown, so no Postgres outlives the server.

Password authentication: pgserver initialises clusters with ``trust``. On
every start DuckMesh makes sure the server requires a password (SCRAM): a
random one is generated once and kept ``0600`` in
``DUCKMESH_DATA_DIR/pg-password``; the role gets it (sent as a SCRAM
verifier, so the plaintext never reaches the server's logs), ``pg_hba.conf``
is rewritten without ``trust`` and the configuration reloaded. This is also
how a data directory made by an older DuckMesh is upgraded. The returned DSN
carries the password; log it only through ``config.redact_dsn``.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from duckmesh.files import POSTGRES_DIR, TRAVERSE_MODE, private_dir, write_private

PASSWORD_FILE = "pg-password"  # noqa: S105 (a file name, not a password)
HBA_CONF = """\
# Written by DuckMesh: every connection must present the password (SCRAM).
# The password is in the data directory's pg-password file.
local   all          all                  scram-sha-256
host    all          all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
local   replication  all                  scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    replication  all   ::1/128        scram-sha-256
"""

log = structlog.get_logger("duckmesh.embedded")


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI machines); harmless.
        warnings.simplefilter("ignore")
        import pgserver

        return pgserver


class EmbeddedPostgres:
    """Start, locate and stop the Postgres that lives in the data directory."""

    def __init__(self, data_dir: Path, *, owner: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / POSTGRES_DIR
        self._server: Any = None
        self.owner = owner  # holds the data-directory lock: stops the server whoever started it
        self.adopted = False  # True when another live process started it (left running for it)

    def start(self) -> str:
        """Start (or adopt) the server, make sure it requires the password, and
        return a libpq DSN (with the password) for it."""
        private_dir(self.data_dir)
        pg = _pgserver()
        from pgserver.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        left_running = running is not None and running.is_running()
        if left_running and self.owner:
            log.warning("adopting a Postgres left running by a stopped server; stopped on exit")
        self.adopted = left_running and not self.owner
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pg.get_server(self.pgdata, cleanup_mode=None)
        if self._server.system_user is not None:
            # As root, pgserver runs Postgres as its own system user and opens
            # every parent of pgdata to others (o+rx); traversal is all it needs.
            os.chmod(self.data_dir, TRAVERSE_MODE)
        uri: str = self._server.get_uri()
        password = self._password()
        if self._hba_trusts() or accepts_without_password(uri):
            self._require_password(uri, password)
        return make_conninfo(uri, password=password)

    def _password(self) -> str:
        """The catalog password, generated on first use (0600 file)."""
        path = self.data_dir / PASSWORD_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        candidate = self.data_dir / f".{PASSWORD_FILE}.{os.getpid()}"
        write_private(candidate, secrets.token_urlsafe(32).encode())
        try:
            os.link(candidate, path)  # atomic "create if absent": concurrent starts agree
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
        return path.read_text().strip()

    def _hba_trusts(self) -> bool:
        for line in (self.pgdata / "pg_hba.conf").read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if "trust" in fields:
                return True
        return False

    def _require_password(self, uri: str, password: str) -> None:
        """Give the role the password, then refuse every connection without it."""
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(
                    sql.Literal(scram_verifier(conn, password))
                )
            )
            replace_keeping_owner(self.pgdata / "pg_hba.conf", HBA_CONF)
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while accepts_without_password(uri):  # the reload is asynchronous
            if time.monotonic() > deadline:
                raise RuntimeError("the embedded Postgres still accepts password-less connections")
            time.sleep(0.02)
        log.info("embedded Postgres now requires a password", password_file=PASSWORD_FILE)

    def postmaster_pid(self) -> int | None:
        """The pid of the running postmaster of this data directory, or None.

        Read from ``postmaster.pid`` directly: Postgres appends that file's
        lines while it starts, and pgserver's reader asserts on a file that
        is still being written (seen crashing the group during a restart).
        The pid is its first line, written before anything else."""
        path = self.pgdata / "postmaster.pid"
        deadline = time.monotonic() + 1.0
        while True:
            try:
                first = path.read_text().split("\n", 1)[0].strip()
            except FileNotFoundError:
                return None
            if first.isdigit():
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)  # the file was just created: its first line follows
        pid = int(first)
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE and "postgres" in proc.name()
        except psutil.Error:
            return None
        return pid if alive else None

    def ensure_running(self) -> bool:
        """Start the server again if it died (Postgres runs crash recovery on
        start); True when it had to be started. Refused if not started first."""
        if self._server is None:
            raise RuntimeError("the embedded Postgres was never started")
        if self.postmaster_pid() is not None:
            return False
        with self._server._lock:  # pgserver's own lock between processes
            self._server.ensure_postgres_running()
        return True

    def stop(self) -> None:
        """Stop the server we started (fast shutdown: sessions are rolled back).

        A server adopted from another live process is left running for it.
        """
        if self._server is None:
            return
        if self.adopted:
            self._server = None
            return
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        info = self._server.get_postmaster_info()
        if info is not None and info.is_running():
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self.pgdata,
                user=self._server.system_user,
                timeout=30,
            )
        self._server = None


def running_dsn(data_dir: Path) -> str | None:
    """The DSN (with the password) of the embedded Postgres already running in
    ``data_dir``, or None; for tools that must not start one."""
    _pgserver()
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir.resolve() / POSTGRES_DIR)
    if info is None or not info.is_running():
        return None
    uri: str = info.get_uri()
    password = data_dir / PASSWORD_FILE
    return make_conninfo(uri, password=password.read_text().strip()) if password.exists() else uri


def accepts_without_password(uri: str) -> bool:
    try:
        with psycopg.connect(uri, connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def scram_verifier(conn: psycopg.Connection[Any], password: str) -> str:
    """The SCRAM-SHA-256 verifier for ``password``, computed client-side by
    libpq (``PQencryptPasswordConn``), so the plaintext never reaches the server."""
    user = conn.info.user.encode()
    verifier = conn.pgconn.encrypt_password(password.encode(), user, b"scram-sha-256")
    return verifier.decode()


def replace_keeping_owner(path: Path, text: str) -> None:
    """Replace a file of the Postgres data directory atomically, keeping its
    owner (as root, Postgres runs as another user) and mode."""
    st = path.stat()
    temp = path.with_name(f".{path.name}.duckmesh")
    temp.write_text(text)
    os.chown(temp, st.st_uid, st.st_gid)
    os.chmod(temp, st.st_mode & 0o777)
    os.replace(temp, path)
