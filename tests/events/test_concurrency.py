"""Optimistic concurrency of the event log, and upcasting on read.

Two writers on one stream with the same expected version: both are inside
their transactions before either commits (a ``threading.Barrier``), exactly
one wins and the other gets ``ConcurrencyConflict``, and the stream's
versions stay 1..n with no gap and no duplicate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from duckmesh.catalog.journal import append
from duckmesh.events import (
    ConcurrencyConflict,
    decode,
    read_all,
    read_stream,
    stream_version,
)
from duckmesh.events import types as event_types
from duckmesh.events.types import (
    MaintenanceCompleted,
    TenantCreated,
    UnknownEventType,
)

Conn = psycopg.Connection[Any]
STREAM = "maintenance:race"


def _event(n: int) -> MaintenanceCompleted:
    return MaintenanceCompleted("race", "test", {"n": n})


def _versions(conn: Conn, stream: str = STREAM) -> list[int]:
    rows = conn.execute(
        "SELECT version FROM event_log WHERE stream = %s ORDER BY position", (stream,)
    ).fetchall()
    return [r[0] for r in rows]


def _race(
    dsn: str, expected: int, writers: int = 2, hold_s: float = 0.05
) -> list[BaseException | None]:
    """``writers`` threads append on STREAM at ``expected``; each result is
    None (won) or the exception raised."""
    barrier = threading.Barrier(writers, timeout=10)
    results: list[BaseException | None] = [None] * writers

    def writer(i: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
                # Inside the transaction (BEGIN sent and a snapshot taken) ...
                conn.execute("SELECT 1")
                barrier.wait()
                # ... then everybody appends; the winner holds its row lock a
                # moment before committing, so the others really wait on it.
                append(conn, STREAM, expected, [_event(i)], tenant_id="race")
                time.sleep(hold_s)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return results


@pytest.mark.parametrize("expected", [0, 3], ids=["new-stream", "existing-stream"])
def test_two_writers_same_expected_version_exactly_one_wins(
    conn: Conn, dsn: str, expected: int
) -> None:
    if expected:
        with conn.transaction():
            append(conn, STREAM, 0, [_event(-n) for n in range(expected)], tenant_id="race")
    results = _race(dsn, expected)
    winners = [r for r in results if r is None]
    losers = [r for r in results if r is not None]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], ConcurrencyConflict)
    assert losers[0].error_code == "CONCURRENCY_CONFLICT"
    assert losers[0].stream == STREAM
    assert losers[0].expected == expected
    assert stream_version(conn, STREAM) == expected + 1
    assert _versions(conn) == list(range(1, expected + 2))
    # The loser wrote nothing at all, projections included.
    runs = conn.execute("SELECT count(*) FROM maintenance_run").fetchone()
    assert runs == (expected + 1,)


def test_many_writers_one_winner(conn: Conn, dsn: str) -> None:
    results = _race(dsn, 0, writers=6, hold_s=0.02)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ConcurrencyConflict) for r in results if r is not None)
    assert _versions(conn) == [1]


def test_writers_that_retry_leave_no_gap_and_no_duplicate(conn: Conn, dsn: str) -> None:
    """Each writer re-reads the version and retries on conflict, as callers must."""
    writers, each = 4, 5
    barrier = threading.Barrier(writers, timeout=10)
    conflicts = [0] * writers
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                barrier.wait()
                done = 0
                while done < each:
                    try:
                        with c.transaction():
                            version = stream_version(c, STREAM)
                            append(c, STREAM, version, [_event(i * 100 + done)], tenant_id="race")
                        done += 1
                    except ConcurrencyConflict:
                        conflicts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    total = writers * each
    assert _versions(conn) == list(range(1, total + 1))
    assert stream_version(conn, STREAM) == total
    recorded = [r.event for r in read_stream(conn, STREAM)]
    payload_ns = sorted(e.summary["n"] for e in recorded if isinstance(e, MaintenanceCompleted))
    assert payload_ns == sorted(i * 100 + k for i in range(writers) for k in range(each))


def test_stale_expected_version_conflicts_and_writes_nothing(conn: Conn) -> None:
    with conn.transaction():
        append(conn, STREAM, 0, [_event(1), _event(2)], tenant_id="race")
    for stale in (0, 1, 3, 7):
        with pytest.raises(ConcurrencyConflict) as info, conn.transaction():
            append(conn, STREAM, stale, [_event(99)], tenant_id="race")
        assert info.value.expected == stale
        assert info.value.context["expected_version"] == stale
    assert _versions(conn) == [1, 2]
    assert stream_version(conn, STREAM) == 2
    with conn.transaction():
        recorded = append(conn, STREAM, 2, [_event(3)], tenant_id="race")
    assert [r.version for r in recorded] == [3]


def test_a_batch_of_events_takes_consecutive_versions(conn: Conn) -> None:
    with conn.transaction():
        first = append(conn, STREAM, 0, [_event(n) for n in range(3)], tenant_id="race")
        second = append(conn, STREAM, 3, [_event(n) for n in range(2)], tenant_id="race")
    assert [r.version for r in first + second] == [1, 2, 3, 4, 5]
    positions = [r.position for r in first + second]
    assert positions == sorted(positions)
    assert [r.version for r in read_stream(conn, STREAM)] == [1, 2, 3, 4, 5]
    assert [r.position for r in read_all(conn, batch=2)] == positions
    assert [r.position for r in read_all(conn, after_position=positions[2])] == positions[3:]


def test_appending_nothing_checks_the_version_and_writes_nothing(conn: Conn) -> None:
    with conn.transaction():
        assert append(conn, STREAM, 0, [], tenant_id="race") == []
    # The stream was not created at version 0 (which would block every append at 0).
    assert conn.execute("SELECT count(*) FROM event_stream").fetchone() == (0,)
    with conn.transaction():
        append(conn, STREAM, 0, [_event(1)], tenant_id="race")
        assert append(conn, STREAM, 1, [], tenant_id="race") == []
    with pytest.raises(ConcurrencyConflict), conn.transaction():
        append(conn, STREAM, 0, [], tenant_id="race")
    assert _versions(conn) == [1]


def test_rolled_back_append_leaves_nothing(conn: Conn) -> None:
    def append_then_fail() -> None:
        with conn.transaction():
            append(conn, STREAM, 0, [_event(1)], tenant_id="race")
            raise RuntimeError("caller failed after appending")

    with pytest.raises(RuntimeError):
        append_then_fail()
    assert stream_version(conn, STREAM) == 0
    assert _versions(conn) == []
    assert conn.execute("SELECT count(*) FROM maintenance_run").fetchone() == (0,)
    with conn.transaction():
        append(conn, STREAM, 0, [_event(1)], tenant_id="race")
    assert _versions(conn) == [1]


def test_metadata_and_tenant_are_recorded(conn: Conn) -> None:
    with conn.transaction():
        append(
            conn,
            STREAM,
            0,
            [_event(1)],
            tenant_id="race",
            metadata={"actor": "k1", "trace_id": "t-1"},
        )
    row = conn.execute("SELECT tenant_id, metadata, event_type FROM event_log").fetchone()
    assert row == ("race", {"actor": "k1", "trace_id": "t-1"}, "MaintenanceCompleted")
    (rec,) = read_stream(conn, STREAM)
    assert rec.metadata == {"actor": "k1", "trace_id": "t-1"}
    assert rec.event == _event(1)


# --- upcasting -----------------------------------------------------------------


def _old_tenant_created(payload: dict[str, Any]) -> dict[str, Any]:
    """A made-up schema version 0 of TenantCreated: {"tenant", "title"}."""
    return {"tenant_id": payload["tenant"], "name": payload["title"]}


@pytest.fixture
def upcasters(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], Callable[..., Any]]:
    """UPCASTERS, restored after the test (monkeypatch undoes every setitem)."""
    monkeypatch.setitem(event_types.UPCASTERS, ("TenantCreated", 0), _old_tenant_created)
    return event_types.UPCASTERS


@pytest.mark.usefixtures("upcasters")
def test_decode_upcasts_an_old_schema_version() -> None:
    event = decode("TenantCreated", 0, {"tenant": "acme", "title": "Acme"})
    assert event == TenantCreated("acme", "Acme")
    # The current version is decoded as is, without upcasting.
    assert decode("TenantCreated", 1, {"tenant_id": "a", "name": "b"}) == TenantCreated("a", "b")


def test_upcasters_chain_over_several_versions(
    upcasters: dict[tuple[str, int], Callable[..., Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        upcasters, ("TenantCreated", -1), lambda p: {"tenant": p["id"], "title": p["id"].upper()}
    )
    assert decode("TenantCreated", -1, {"id": "acme"}) == TenantCreated("acme", "ACME")


def test_upcasters_are_restored_after_the_test() -> None:
    assert ("TenantCreated", 0) not in event_types.UPCASTERS
    assert ("TenantCreated", -1) not in event_types.UPCASTERS


@pytest.mark.usefixtures("upcasters")
def test_stored_old_events_are_upcast_on_read(conn: Conn) -> None:
    conn.execute("INSERT INTO event_stream (stream, version) VALUES ('tenant:old', 1)")
    conn.execute(
        "INSERT INTO event_log (stream, version, event_type, schema_version, tenant_id, payload)"
        " VALUES ('tenant:old', 1, 'TenantCreated', 0, 'old', %s)",
        (json.dumps({"tenant": "old", "title": "Old Co"}),),
    )
    (rec,) = read_stream(conn, "tenant:old")
    assert rec.event == TenantCreated("old", "Old Co")
    assert [r.event for r in read_all(conn)] == [TenantCreated("old", "Old Co")]


def test_missing_upcaster_and_unknown_type_fail_loudly() -> None:
    with pytest.raises(UnknownEventType):
        decode("NoSuchEvent", 1, {})
    with pytest.raises(KeyError):
        decode("TenantCreated", 0, {"tenant": "acme", "title": "Acme"})


def test_events_newer_than_the_code_are_refused() -> None:
    """An event written by a newer DuckMesh must not be half-understood."""
    with pytest.raises(UnknownEventType, match="newer"):
        decode("TenantCreated", 2, {"tenant_id": "a", "name": "b"})


def test_every_event_type_round_trips_through_its_payload() -> None:
    for name, cls in event_types.EVENT_TYPES.items():
        assert cls.event_type == name
        assert cls.schema_version >= 1
    event = TenantCreated("acme", "Acme")
    assert decode(event.event_type, event.schema_version, event.to_payload()) == event
