"""Races over the workers of a real ``duckmesh serve`` group (ADR 0012), with
requests provably spread: each client keeps one connection, opened while
only its worker accepts (the other is SIGSTOPped), so half the writers talk
to ``api-0`` and half to ``api-1`` at the same time.

- token race: tokens stay contiguous, each the one of its record;
- idempotency storm: each key accepted once, every answer naming its token;
- the ingest rate limit is one bucket for the group, not one per worker;
- pending-records backpressure counts what every worker acknowledged.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import psycopg
import pytest

from tests.fixtures import EVENTS, ServerProcess
from tests.server.test_procgroup import HEADERS, _count, _group, _only, _processes

pytestmark = pytest.mark.slow
WRITERS_PER_WORKER = 3
REQUESTS_PER_WRITER = 12


def pinned_clients(srv: ServerProcess, per_worker: int, stack: ExitStack) -> list[httpx.Client]:
    """``per_worker`` keep-alive clients on each API worker, alternating api-0, api-1."""
    rows = _processes(srv)
    a, b = rows["api-0"], rows["api-1"]
    by_worker: list[list[httpx.Client]] = []
    for mine, other in ((a, b), (b, a)):
        clients = []
        with _only(mine, other):
            for _ in range(per_worker):
                client = stack.enter_context(
                    httpx.Client(base_url=srv.base_url, headers=HEADERS, timeout=30)
                )
                assert client.get("/v1/tables").status_code == 200  # the connection is mine's
                clients.append(client)
        by_worker.append(clients)
    return [c for pair in zip(*by_worker, strict=True) for c in pair]


def run_threads(fns: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def test_token_race_over_the_workers_keeps_tokens_contiguous(
    spawn_server: Callable[..., ServerProcess], dsn: str
) -> None:
    srv = _group(spawn_server)
    sent: list[tuple[list[str], dict[str, Any]]] = []
    with ExitStack() as stack:
        clients = pinned_clients(srv, WRITERS_PER_WORKER, stack)
        assert clients[0].post("/v1/tables", json=EVENTS).status_code == 201

        def writer(w: int) -> Callable[[], None]:
            def run() -> None:
                rng = random.Random(w)
                for i in range(REQUESTS_PER_WRITER):
                    keys = [f"w{w}-{i}-{j}" for j in range(rng.randint(1, 5))]
                    body = {
                        "records": [
                            {"idempotency_key": k, "payload": {"id": w * 1000 + i * 10 + j}}
                            for j, k in enumerate(keys)
                        ]
                    }
                    r = clients[w].post("/v1/ingest/events", json=body)
                    assert r.status_code == 200, r.text
                    sent.append((keys, r.json()))

            return run

        run_threads([writer(w) for w in range(len(clients))])
        total = sum(len(keys) for keys, _ in sent)
        assert len(sent) == len(clients) * REQUESTS_PER_WRITER
        expected: dict[str, int] = {}
        for keys, body in sent:
            assert body["accepted_count"] == len(keys)
            for offset, key in enumerate(keys):
                expected[key] = body["max_visibility_token"] - len(keys) + 1 + offset
        assert sorted(expected.values()) == list(range(1, total + 1)), "gap or duplicate"
        with psycopg.connect(dsn) as conn:
            stored: dict[str, int] = dict(
                conn.execute(
                    "SELECT idempotency_key, token FROM bus_row_key WHERE tenant_id = 'default'"
                ).fetchall()
            )
        assert stored == expected
        assert _count(clients[1], total) == (total, total)
    assert srv.terminate(30) == 0


def test_idempotency_storm_spread_over_the_workers(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server)
    keys = 20
    answers: list[tuple[int, int, int]] = []  # (key, accepted, token)
    with ExitStack() as stack:
        clients = pinned_clients(srv, 4, stack)
        assert clients[0].post("/v1/tables", json=EVENTS).status_code == 201

        def storm(client: httpx.Client) -> Callable[[], None]:
            def run() -> None:
                for n in range(keys):
                    body = {"records": [{"idempotency_key": f"s{n}", "payload": {"id": n}}]}
                    r = client.post("/v1/ingest/events", json=body)
                    assert r.status_code == 200, r.text
                    out = r.json()
                    answers.append((n, out["accepted_count"], out["max_visibility_token"]))

            return run

        run_threads([storm(c) for c in clients])
        assert len(answers) == len(clients) * keys
        # Each key accepted once; every answer for it names the same token.
        for n in range(keys):
            mine = [(accepted, token) for key, accepted, token in answers if key == n]
            assert sum(accepted for accepted, _ in mine) == 1
            assert len({token for _, token in mine}) == 1
        assert _count(clients[0], max(t for _, _, t in answers)) == (keys, keys)
    assert srv.terminate(30) == 0


def test_rate_limit_totals_the_configured_rate_over_the_workers(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    rate = 20
    srv = _group(spawn_server, DUCKMESH_INGEST_RATE_LIMIT=str(rate))
    accepted = 0
    refused_by: set[int] = set()
    with ExitStack() as stack:
        clients = pinned_clients(srv, 1, stack)
        assert clients[0].post("/v1/tables", json=EVENTS).status_code == 201
        began = time.monotonic()
        for n in range(8):  # 10 records each, alternating api-0 and api-1
            body = {
                "records": [
                    {"idempotency_key": f"r{n}-{j}", "payload": {"id": n * 10 + j}}
                    for j in range(10)
                ]
            }
            r = clients[n % 2].post("/v1/ingest/events", json=body)
            if r.status_code == 200:
                accepted += r.json()["accepted_count"]
            else:
                assert r.status_code == 429, r.text
                assert r.json()["error_code"] == "RATE_LIMITED"
                refused_by.add(n % 2)
        elapsed = time.monotonic() - began
    # One bucket of `rate` (one second's burst) refilling at `rate`/s: with a
    # bucket per worker the first four requests alone would be 2x the burst.
    assert accepted <= rate * (1 + elapsed), (accepted, elapsed)
    assert refused_by == {0, 1}
    assert srv.terminate(30) == 0


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_pending_records_backpressure_counts_every_workers_acks(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = _group(spawn_server, DUCKMESH_MAX_PENDING_RECORDS="10")
    coordinator = _processes(srv)["coordinator"]["pid"]
    batch = {"records": [{"idempotency_key": f"p{n}", "payload": {"id": n}} for n in range(12)]}
    one = {"records": [{"idempotency_key": "late", "payload": {"id": 99}}]}
    with ExitStack() as stack:
        on_a, on_b = pinned_clients(srv, 1, stack)
        assert on_a.post("/v1/tables", json=EVENTS).status_code == 201
        with stopped(coordinator):  # nothing becomes visible meanwhile
            assert on_a.post("/v1/ingest/events", json=batch).status_code == 200
            # api-1 acknowledged nothing itself: the 12 pending are api-0's.
            refused = on_b.post("/v1/ingest/events", json=one)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error_code"] == "RATE_LIMITED"
            assert refused.json()["context"]["pending_records"] == 12
        assert _count(on_b, 12) == (12, 12)
        deadline = time.monotonic() + 10
        while (r := on_b.post("/v1/ingest/events", json=one)).status_code == 429:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 200, r.text
    assert srv.terminate(30) == 0
