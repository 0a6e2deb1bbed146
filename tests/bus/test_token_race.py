"""Acceptance (SPEC §2.3): tokens are per tenant, contiguous and in commit order.

1. Many writers race over real HTTP against two API nodes of one catalog (so
   two group committers publish for the tenant in parallel, as two API
   replicas would); every receipt's tokens are exactly 1..N, each token
   belongs to the record acknowledged with it, and a concurrent watermark
   observer never sees a committed token above a missing one.
2. Negative control: the same observer run against a sequence-based token
   source (``tests.bus.naive_bus``) does catch the out-of-order commit, so
   the race test can fail; and the real ``PostgresBus`` cannot produce that
   interleaving because the counter-row lock makes the second writer wait.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from duckmesh.bus.postgres import PostgresBus
from duckmesh.bus.protocol import Receipts
from duckmesh.config import Config
from duckmesh.db import Database
from duckmesh.errors import DuckMeshError
from tests.bus.contract import ok, poll_until, rec
from tests.bus.naive_bus import (
    NAIVE_TABLE,
    HeldOpenDatabase,
    NaiveSequenceBus,
    Observation,
    WatermarkObserver,
)
from tests.bus.nodes import second_api_node
from tests.fixtures import EVENTS, LiveServer

TENANT = "default"
WRITERS = 16
REQUESTS_PER_WRITER = 30


async def test_concurrent_writers_get_contiguous_tokens_in_commit_order(
    server: LiveServer, make_config: Callable[..., Config], dsn: str
) -> None:
    await server.create_table(EVENTS)
    async with second_api_node(make_config, dsn) as other:
        await _race(server, (server, other))


async def _race(server: LiveServer, nodes: tuple[LiveServer, ...]) -> None:
    obs_db = Database(server.rt.dsn, size=2)
    observer = WatermarkObserver(server.rt.dsn, PostgresBus(obs_db), TENANT, "bus_row_key")
    sent: list[tuple[list[str], dict[str, Any]]] = []  # (keys in order, response body)
    observations: list[Observation] = []
    writers_done = trio.Event()

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for i in range(REQUESTS_PER_WRITER):
            keys = [f"w{w}-r{i}-{j}" for j in range(rng.randint(1, 5))]
            records = [
                {
                    "idempotency_key": k,
                    "payload": {"id": w * 1000 + i * 10 + j, "kind": "race", "value": float(j)},
                }
                for j, k in enumerate(keys)
            ]
            r = await nodes[(w + i) % len(nodes)].ingest("events", records)
            assert r.status_code == 200, r.text
            sent.append((keys, r.json()))

    async def observe() -> None:
        while not writers_done.is_set():
            observations.append(await trio.to_thread.run_sync(observer.observe))

    try:
        with trio.fail_after(45):
            async with trio.open_nursery() as outer:
                outer.start_soon(observe)
                async with trio.open_nursery() as writers:
                    for w in range(WRITERS):
                        writers.start_soon(writer, w)
                writers_done.set()
            observations.append(await trio.to_thread.run_sync(observer.observe))
    finally:
        observer.close()
        obs_db.close()

    # Every receipt: its records got the contiguous run of tokens ending at its max.
    total = sum(len(keys) for keys, _ in sent)
    assert len(sent) == WRITERS * REQUESTS_PER_WRITER
    expected: dict[str, int] = {}
    for keys, body in sent:
        assert body["accepted_count"] == len(keys)
        assert body["duplicate_count"] == 0
        top = body["max_visibility_token"]
        for offset, key in enumerate(keys):
            expected[key] = top - len(keys) + 1 + offset
    all_tokens = sorted(expected.values())
    assert all_tokens == list(range(1, total + 1)), "tokens have a gap or a duplicate"

    # Each token belongs to the record acknowledged with it.
    with psycopg.connect(server.rt.dsn) as conn:
        stored: dict[str, int] = dict(
            conn.execute(
                "SELECT idempotency_key, token FROM bus_row_key WHERE tenant_id = %s", (TENANT,)
            ).fetchall()
        )
    assert stored == expected

    # The watermark property: nothing at or below an observed latest token was missing.
    bad = [(o.observed, sorted(o.missing)[:10]) for o in observations if o.missing]
    assert bad == [], f"observer saw committed tokens above missing ones: {bad[:5]}"
    assert observations[-1].observed == total
    mid_race = [o.observed for o in observations if 0 < o.observed < total]
    assert mid_race, "the observer never looked while writers were running"

    # End to end: a reader told "watermark >= N" sees every record.
    q = await server.query(
        "select count(*) from events", min_visibility_token=total, consistency_timeout_ms=20_000
    )
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[total]]


# -- negative control ---------------------------------------------------------


@pytest.fixture
def naive(dsn: str) -> Iterator[NaiveSequenceBus]:
    NaiveSequenceBus.install(dsn)
    db = Database(dsn, size=2)
    try:
        yield NaiveSequenceBus(db)
    finally:
        db.close()


def _publish_in_thread(bus: PostgresBus, name: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(bus.publish(TENANT, [[rec(name)]]))
        except BaseException as exc:  # reported by the test thread
            out.append(exc)

    thread = threading.Thread(target=run, name=f"publish-{name}", daemon=True)
    thread.start()
    return thread, out


def _single_token(result: list[Receipts | DuckMeshError] | BaseException) -> int:
    if isinstance(result, BaseException):
        raise AssertionError(f"publish raised {result!r}") from result
    (receipt,) = ok(result[0])
    assert not receipt.duplicate
    return receipt.token


def test_negative_control_sequence_tokens_let_the_observer_catch_a_gap(
    naive: NaiveSequenceBus, dsn: str
) -> None:
    """Proves the race test's observer can fail: with nextval tokens it sees T2 before T1."""
    assert _single_token(naive.publish(TENANT, [[rec("seed")]])) == 1
    held = HeldOpenDatabase(dsn)
    observer = WatermarkObserver(dsn, naive, TENANT, NAIVE_TABLE)
    try:
        t1, t1_out = _publish_in_thread(NaiveSequenceBus(held), "t1")
        assert held.entered.wait(10), "T1 never reached its commit"
        # T1 holds token 2 uncommitted; T2 takes 3 and commits without waiting.
        assert _single_token(naive.publish(TENANT, [[rec("t2")]])) == 3
        seen = observer.observe()
        assert seen.observed == 3
        assert seen.missing == {2}, "the negative control must expose the gap"
        held.release.set()
        t1.join(10)
        assert not t1.is_alive()
        # T1 commits token 2 *after* a reader was told 3: it would have been missed.
        assert _single_token(t1_out[0]) == 2
        assert observer.observe().missing == set()
    finally:
        held.release.set()
        observer.close()
        held.close()


def test_counter_row_lock_makes_the_second_writer_wait_for_the_first(dsn: str) -> None:
    """The same interleaving against PostgresBus: T2 cannot commit before T1."""
    db = Database(dsn, size=2)
    bus = PostgresBus(db)
    held = HeldOpenDatabase(dsn)
    impatient_db = Database(make_conninfo(dsn, options="-c lock_timeout=200"), size=1)
    observer = WatermarkObserver(dsn, bus, TENANT, "bus_row_key")
    try:
        assert _single_token(bus.publish(TENANT, [[rec("seed")]])) == 1
        t1, t1_out = _publish_in_thread(PostgresBus(held), "t1")
        assert held.entered.wait(10), "T1 never reached its commit"

        # T2 with a lock timeout: it cannot get past T1's counter-row lock.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            PostgresBus(impatient_db).publish(TENANT, [[rec("t2-impatient")]])

        # T2 without a timeout: it waits on the lock (seen in pg_stat_activity).
        t2, t2_out = _publish_in_thread(bus, "t2")
        with psycopg.connect(dsn, autocommit=True) as conn:

            def t2_waits_on_a_lock() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()
                return row is not None and row[0] >= 1

            poll_until(t2_waits_on_a_lock)
        assert t2.is_alive()
        assert not t2_out
        seen = observer.observe()
        assert seen.observed == 1  # nothing past the seed is visible while T1 is open
        assert seen.missing == set()

        held.release.set()
        t1.join(10)
        t2.join(10)
        assert not t1.is_alive()
        assert not t2.is_alive()
        assert _single_token(t1_out[0]) == 2
        assert _single_token(t2_out[0]) == 3
        final = observer.observe()
        assert final.observed == 3
        assert final.missing == set()
    finally:
        held.release.set()
        observer.close()
        held.close()
        impatient_db.close()
        db.close()
