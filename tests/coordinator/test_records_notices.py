"""New-records notices (one per group commit) reach Trio only when a
coordinator waits for one; the count still advances, so a notice that lands
between reading the count and waiting is never missed."""

from __future__ import annotations

import functools

import psycopg
import trio
import trio.testing

from duckmesh.bus.postgres import RECORDS_CHANNEL
from duckmesh.events import EVENTS_CHANNEL
from duckmesh.notify import Notifications


def _notify(dsn: str, channel: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(count):
            conn.execute("SELECT pg_notify(%s, %s)", (channel, f"default:{i}"))


async def _until(check: object, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.01)


async def test_records_notices_are_counted_without_a_hop_and_wake_a_waiter(dsn: str) -> None:
    notes = Notifications()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(notes.listen, dsn, stop=stop))
        # Nobody waits: the count advances, Trio is not bothered.
        await trio.to_thread.run_sync(_notify, dsn, RECORDS_CHANNEL, 3)
        await _until(lambda: notes.records.seq == 3)
        assert notes.hops == 0
        # A notice after the count was read is not missed: the wait returns at once.
        seen = notes.records.seq
        await trio.to_thread.run_sync(_notify, dsn, RECORDS_CHANNEL, 1)
        await _until(lambda: notes.records.seq == seen + 1)
        with trio.fail_after(1):
            await notes.records.wait(seen, 60)
        # A waiter is woken by the next notice (well before its timeout).
        seen = notes.records.seq
        woken = trio.Event()

        async def waiter() -> None:
            await notes.records.wait(seen, 60)
            woken.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()  # the waiter is parked
        await trio.to_thread.run_sync(_notify, dsn, RECORDS_CHANNEL, 1)
        with trio.fail_after(10):
            await woken.wait()
        assert notes.hops >= 1
        # Other channels are still handed to Trio (cache invalidation).
        streams: list[str] = []
        notes.on_event(streams.append)
        await trio.to_thread.run_sync(_notify, dsn, EVENTS_CHANNEL, 1)
        await _until(lambda: streams == ["default:0"])
        stop.set()
