"""``duckmesh serve`` as a process group (ADR 0012), with real processes: a
SIGKILLed API worker or coordinator is restarted and nothing acknowledged is
lost or doubled; the ingest rate limit and read-after-write hold across
workers (SIGSTOP pins which worker accepts a connection)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ServerProcess

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}


def _group(spawn_server: Callable[..., ServerProcess], **env: str) -> ServerProcess:
    srv = spawn_server(DUCKMESH_API_WORKERS="2", **env)
    srv.start(wait=False)
    srv.wait_ready(timeout=90)  # four children start one after another; CI may be busy
    _wait_processes(srv, lambda rows: all(r["state"] == "running" for r in rows.values()))
    return srv


def _processes(srv: ServerProcess) -> dict[str, dict[str, Any]]:
    body = httpx.get(srv.base_url + "/v1/ready", timeout=10).json()
    return {row["name"]: row for row in body["processes"]}


def _wait_processes(
    srv: ServerProcess, done: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 60
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            rows = _processes(srv)
            if done(rows):
                return rows
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"process tree never got there: {rows}\n{srv.logs()}")


def _fresh(srv: ServerProcess) -> httpx.Client:
    """A client on a new connection each request (so the kernel picks a worker)."""
    return httpx.Client(
        base_url=srv.base_url,
        headers=HEADERS,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _ingest_retrying(client: httpx.Client, n: int) -> int:
    """One record, retried on what a killed worker can cause; its token."""
    body = {"records": [{"idempotency_key": f"k{n}", "payload": {"id": n}}]}
    for _ in range(50):
        try:
            r = client.post("/v1/ingest/events", json=body)
        except httpx.TransportError:
            continue
        if r.status_code == 200:
            return int(r.json()["max_visibility_token"])
        assert r.status_code in (429, 503), r.text
        time.sleep(0.1)
    raise AssertionError(f"record {n} never acknowledged")


def _count(client: httpx.Client, token: int) -> tuple[int, int]:
    r = client.post(
        "/v1/query",
        json={
            "sql": "select count(*), count(distinct id) from events",
            "min_visibility_token": token,
            "consistency_timeout_ms": 30_000,
        },
    )
    assert r.status_code == 200, r.text
    total, distinct = r.json()["rows"][0]
    return int(total), int(distinct)


def test_killed_api_worker_restarts_and_acked_records_are_visible_once(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server)
    with _fresh(srv) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        acked: list[int] = []
        tokens: list[int] = []
        stop = threading.Event()

        def stream() -> None:
            n = 0
            while not stop.is_set():
                tokens.append(_ingest_retrying(client, n))
                acked.append(n)
                n += 1

        writer = threading.Thread(target=stream)
        writer.start()
        try:
            while len(acked) < 30:
                time.sleep(0.05)
            victim = _processes(srv)["api-0"]
            os.kill(victim["pid"], signal.SIGKILL)
            rows = _wait_processes(
                srv, lambda r: r["api-0"]["restarts"] == 1 and r["api-0"]["state"] == "running"
            )
            assert rows["api-0"]["pid"] != victim["pid"]
            settled = len(acked)
            while len(acked) < settled + 30:
                time.sleep(0.05)
        finally:
            stop.set()
            writer.join(60)
        assert _count(client, max(tokens)) == (len(acked), len(acked))
    assert srv.terminate(30) == 0


def test_killed_coordinator_restarts_takes_the_lease_and_loses_nothing(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server)
    with _fresh(srv) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        first = max(_ingest_retrying(client, n) for n in range(20))
        assert _count(client, first) == (20, 20)
        victim = _processes(srv)["coordinator"]
        os.kill(victim["pid"], signal.SIGKILL)
        # Acknowledged while no coordinator runs: pending until the new one holds the lease.
        last = max(_ingest_retrying(client, n) for n in range(20, 40))
        rows = _wait_processes(
            srv,
            lambda r: r["coordinator"]["restarts"] == 1 and r["coordinator"]["state"] == "running",
        )
        assert rows["coordinator"]["pid"] != victim["pid"]
        assert _count(client, last) == (40, 40)
        # Whichever worker answers serves the whole group's metrics, merged:
        # counters summed over the workers, the coordinator process's gauges.
        text = client.get("/v1/metrics").text
        assert _samples(text, "duckmesh_ingest_records_total") == [40.0]
        up = _samples(text, 'duckmesh_actor_up{actor="coordinator-0"')
        assert up == [1.0], text
    assert srv.terminate(30) == 0


def _samples(text: str, prefix: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    ]


@contextmanager
def _only(worker: dict[str, Any], other: dict[str, Any]) -> Iterator[None]:
    """Only ``worker`` accepts while the block runs: ``other`` is stopped."""
    os.kill(other["pid"], signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(other["pid"], signal.SIGCONT)


def test_rate_limit_is_shared_by_the_workers(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server, DUCKMESH_INGEST_RATE_LIMIT="20")
    rows = _processes(srv)
    a, b = rows["api-0"], rows["api-1"]
    batch = {"records": [{"idempotency_key": f"r{n}", "payload": {"id": n}} for n in range(18)]}
    with _fresh(srv) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        with _only(a, b):
            assert client.post("/v1/ingest/events", json=batch).status_code == 200
        with _only(b, a):
            # api-1's own bucket would be full; the tenant's shared one is not.
            refused = client.post("/v1/ingest/events", json=batch)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_code"] == "RATE_LIMITED"
    assert srv.terminate(30) == 0


def test_read_after_write_when_another_worker_answers_the_query(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server)
    rows = _processes(srv)
    a, b = rows["api-0"], rows["api-1"]
    with _fresh(srv) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        for n in range(3):
            with _only(a, b):
                token = _ingest_retrying(client, n)
            with _only(b, a):
                assert _count(client, token) == (n + 1, n + 1)
    assert srv.terminate(30) == 0
