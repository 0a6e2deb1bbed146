"""Shared test fixtures: a real Postgres, a fresh catalog per test, a running app.

- ``pg_dsn`` (session): ``DUCKMESH_TEST_DSN`` or an embedded Postgres started
  once for the whole run.
- ``dsn``: a fresh, migrated database cloned from a template (fast).
- ``runtime``: a bootstrapped ``Runtime`` on that database with ``tmp_path``
  as its data directory.
- ``server``: the whole supervision tree and HTTP API running in the test's
  nursery on a free port, with an ``httpx`` client already authenticated.
- ``spawn_server``: ``duckmesh serve`` as a real subprocess, for crash and
  signal tests.
- ``s3_server`` (session) and ``s3_bucket``: the S3-compatible test server
  (moto) and a fresh bucket on it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from duckmesh import migrations
from duckmesh.catalog import reads
from duckmesh.config import Config, load_config
from duckmesh.coordinator.committer import Committer
from duckmesh.embedded import EmbeddedPostgres
from duckmesh.runtime import Runtime, build_runtime, coordinator_actors, migrate_and_bootstrap
from duckmesh_testing.procs import free_port, server_env, spawn_serve
from duckmesh_testing.s3server import S3TestServer

# A fixed key that passes the weak-key check (it is public: tests only).
BOOTSTRAP_KEY = "dmk_test_hdIKTV4c2RHBarDrhSuMRUs2gIDIZxVg-1oN06BQ"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    given = os.environ.get("DUCKMESH_TEST_DSN")
    if given:
        yield given
        return
    # Short path: the Unix socket lives in the data directory (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="dmpg"))
    embedded = EmbeddedPostgres(root)
    dsn = embedded.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Test speed only (this server is thrown away); never done by serve.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield dsn
    finally:
        embedded.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_dsn: str) -> str:
    name = f"dm_tpl_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(make_conninfo(pg_dsn, dbname=name), autocommit=True) as conn:
        migrations.migrate_up(conn)
    return name


@pytest.fixture
def dsn(pg_dsn: str, template_db: str) -> Iterator[str]:
    name = f"dm_t_{secrets.token_hex(5)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    try:
        yield make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_config(tmp_path: Path, dsn: str) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "catalog_dsn": dsn,
            "http_port": free_port(),
            "bootstrap_api_key": BOOTSTRAP_KEY,
            "log_format": "json",
            "log_level": "warning",
            "flush_interval_ms": 100,
            "commit_linger_ms": 5,
        }
        base.update(overrides)
        return load_config(environ={}, overrides=base)

    return make


@pytest.fixture
def runtime(make_config: Callable[..., Config], dsn: str) -> Iterator[Runtime]:
    rt = build_runtime(make_config(), dsn=dsn)
    migrate_and_bootstrap(rt)
    try:
        yield rt
    finally:
        rt.close()


@attrs.define
class LiveServer:
    rt: Runtime
    base_url: str
    client: httpx.AsyncClient
    key: str = BOOTSTRAP_KEY

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def create_table(self, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.client.post("/v1/tables", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def ingest(self, table: str, records: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        return await self.client.post(f"/v1/ingest/{table}", json={"records": records, **kw})

    async def query(self, sql: str, **kw: Any) -> httpx.Response:
        return await self.client.post("/v1/query", json={"sql": sql, **kw})


async def start_server(rt: Runtime, nursery: trio.Nursery) -> LiveServer:
    from duckmesh.lifecycle import open_listener
    from duckmesh.server import serve

    listener = open_listener(rt.config.http_host, rt.config.http_port)

    async def run() -> None:
        with listener:  # closed when the server stops or is cancelled
            await serve(rt, listener)

    nursery.start_soon(run)
    base = f"http://127.0.0.1:{rt.config.http_port}"
    client = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}, timeout=30
    )
    with trio.fail_after(20):
        while True:
            try:
                r = await client.get("/v1/ready")
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await trio.sleep(0.02)
    return LiveServer(rt, base, client)


@pytest.fixture
async def server(runtime: Runtime, nursery: trio.Nursery) -> AsyncIterator[LiveServer]:
    srv = await start_server(runtime, nursery)
    try:
        yield srv
    finally:
        await srv.client.aclose()
        tree = runtime.root
        if tree is not None:
            await tree.stop()
        nursery.cancel_scope.cancel()


StartApp = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def start_app(
    make_config: Callable[..., Config], dsn: str, nursery: trio.Nursery
) -> AsyncIterator[StartApp]:
    """Start in-process servers with configuration overrides; stops them all."""
    made: list[LiveServer] = []

    async def start(**overrides: Any) -> LiveServer:
        rt = build_runtime(make_config(**overrides), dsn=dsn)
        migrate_and_bootstrap(rt)
        srv = await start_server(rt, nursery)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        await srv.client.aclose()
        srv.rt.queries.stop()
        if srv.rt.root is not None:
            await srv.rt.root.stop()
        srv.rt.close()
    nursery.cancel_scope.cancel()


ORDERS = {
    "name": "orders",
    "columns": [
        {"name": "order_id", "type": "BIGINT", "nullable": False},
        {"name": "status", "type": "VARCHAR"},
        {"name": "amount", "type": "DOUBLE"},
        {"name": "created_at", "type": "TIMESTAMP"},
    ],
    "primary_key": ["order_id"],
}

EVENTS = {
    "name": "events",
    "columns": [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "kind", "type": "VARCHAR"},
        {"name": "value", "type": "DOUBLE"},
    ],
}


@attrs.define
class ServerProcess:
    """``duckmesh serve`` in a subprocess (real signals, real SIGKILL)."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self, *, role: str = "all", extra_env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        env = dict(self.env, **(extra_env or {}))
        self.proc = spawn_serve(role, env, self.log_path, cwd=REPO)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.logs()}")
            try:
                r = httpx.get(self.base_url + "/v1/ready", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.logs()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn_server(tmp_path: Path, dsn: str) -> Iterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        port = free_port()
        base = server_env(
            DUCKMESH_DATA_DIR=str(tmp_path / "data"),
            DUCKMESH_CATALOG_DSN=dsn,
            DUCKMESH_HTTP_PORT=str(port),
            DUCKMESH_BOOTSTRAP_API_KEY=BOOTSTRAP_KEY,
            DUCKMESH_LOG_FORMAT="json",
            DUCKMESH_FLUSH_INTERVAL_MS="100",
            DUCKMESH_LEASE_MS="1500",
            # One process per server (the `--role all` debugging layout); the
            # process-group tests ask for workers explicitly.
            DUCKMESH_API_WORKERS="1",
        )
        base.update(env)
        sp = ServerProcess(base, port, tmp_path / f"server-{len(made)}.log")
        made.append(sp)
        return sp

    yield make
    for sp in made:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(10)


# One committer per runtime for tests that commit by hand: a new one would wait
# out the previous one's lease. Holding the runtime keeps its id from being reused.
_COMMITTERS: dict[int, tuple[Runtime, Committer]] = {}


def table_paths(rt: Runtime, table: str) -> list[str]:
    """Sorted object keys of the files the latest snapshot lists for a table
    of tenant ``default``."""

    def load(c: Any) -> list[str]:
        head = reads.latest_snapshot(c, "default")
        tdef = reads.get_table(c, "default", table)
        assert head is not None
        assert tdef is not None
        files = reads.snapshot_files(c, "default", head.snapshot_id)
        return sorted(f.path for f in files if f.table_id == tdef.table_id)

    return rt.db.call(load, transaction=False)


def shared_committer(rt: Runtime) -> Committer:
    cached = _COMMITTERS.get(id(rt))
    if cached is None or cached[0] is not rt:
        cached = (rt, coordinator_actors(rt)[0].committer)
        _COMMITTERS[id(rt)] = cached
    return cached[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """The S3-compatible test server (moto), once per run (ADR 0019)."""
    server = S3TestServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3TestServer) -> str:
    """A new, empty bucket on the S3-compatible test server."""
    name = f"dm-{secrets.token_hex(6)}"
    s3_server.create_bucket(name)
    return name
