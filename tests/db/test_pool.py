"""The catalog pool (``psycopg_pool.ConnectionPool`` behind ``Database``) on a real Postgres.

Per-connection setup, the checkout check, the checkout timeout as a retryable
error, the Trio-side limiter and the pool statistics in ``/v1/metrics``.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import trio
from prometheus_client import generate_latest

from duckmesh import metrics
from duckmesh.db import Conn, Database
from duckmesh.errors import DuckMeshError
from tests.fixtures import LiveServer


@pytest.fixture
def held() -> Iterator[threading.Event]:
    """Released at the end of the test even if it fails, so no thread hangs."""
    release = threading.Event()
    yield release
    release.set()


def _hold(db: Database, release: threading.Event, holding: threading.Semaphore) -> None:
    def wait(conn: Conn) -> None:
        holding.release()
        assert release.wait(30)

    db.call(wait, transaction=False)


def _sample(name: str, pool: str) -> float:
    text = generate_latest(metrics.REGISTRY).decode()
    found = re.search(rf'^{name}{{pool="{re.escape(pool)}"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} for pool {pool} not exported"
    return float(found.group(1))


def test_every_connection_is_set_to_utc(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        dbname = admin.info.dbname
        admin.execute(f"ALTER DATABASE {dbname} SET timezone = 'Asia/Tokyo'")
    db = Database(dsn, size=2)
    try:
        assert db.call(lambda c: c.execute("SHOW TimeZone").fetchone()) == ("UTC",)
    finally:
        db.close()


def test_a_checkout_that_waits_too_long_is_a_retryable_overloaded_error(
    dsn: str, held: threading.Event
) -> None:
    name = f"t-{secrets.token_hex(4)}"
    db = Database(dsn, size=2, timeout_s=0.2, name=name)
    holding = threading.Semaphore(0)
    holders = [threading.Thread(target=_hold, args=(db, held, holding)) for _ in range(2)]
    try:
        for t in holders:
            t.start()
        for _ in holders:
            assert holding.acquire(timeout=30)
        with pytest.raises(DuckMeshError) as raised:
            db.call(lambda c: c.execute("SELECT 1").fetchone())
        assert raised.value.error_code == "OVERLOADED"
        assert raised.value.retryable
        assert raised.value.http_status == 503
        assert raised.value.context == {"pool": name, "pool_size": 2}
        assert _sample("duckmesh_db_pool_timeouts_total", name) == 1
        held.set()
        for t in holders:
            t.join(30)
        assert db.call(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
    finally:
        held.set()
        db.close()


def test_a_connection_killed_while_idle_is_replaced_at_checkout(dsn: str) -> None:
    name = f"t-{secrets.token_hex(4)}"
    db = Database(dsn, size=2, name=name)
    try:
        pid = db.call(lambda c: c.info.backend_pid, transaction=False)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Killed = gone from pg_stat_activity (its FATAL notice was sent
            # to the client before that); terminate only signals the backend.
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not exit"
                time.sleep(0.01)
        # The check on checkout finds the dead connection and opens another.
        again = db.call(lambda c: c.info.backend_pid, transaction=False)
        assert again != pid
        assert _sample("duckmesh_db_pool_connections_lost_total", name) == 1
    finally:
        db.close()


async def test_trio_callers_wait_in_trio_not_on_the_pool(dsn: str) -> None:
    """Six concurrent ``run`` calls on a pool of two: at most two threads at a
    time, and none waits on the pool long enough to time out."""
    db = Database(dsn, size=2, timeout_s=0.5)
    inside = 0
    most = 0
    lock = threading.Lock()

    def slow(conn: Conn) -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        conn.execute("SELECT pg_sleep(0.3)")
        with lock:
            inside -= 1

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(db.run, slow)
        assert most == 2
        assert db.stats().get("requests_errors", 0) == 0
    finally:
        db.close()


async def test_pool_statistics_are_in_the_metrics_endpoint(server: LiveServer) -> None:
    await server.client.get("/v1/tables")
    text = (await server.client.get("/v1/metrics")).text
    size = server.rt.config.db_pool_size
    assert f'duckmesh_db_pool_max_connections{{pool="catalog"}} {float(size)}' in text
    requests = re.search(r'^duckmesh_db_pool_requests_total\{pool="catalog"\} (\S+)$', text, re.M)
    assert requests is not None
    assert float(requests.group(1)) >= 1
    assert 'duckmesh_db_pool_connections{pool="catalog"}' in text
