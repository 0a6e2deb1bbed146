"""A snapshot notice ends a wait only as far as each mode allows: a receipt's
wait (mode B) is answered with the snapshot a notice names once its watermark
covers the token — a notice is delivered only after its publication
committed; a query's wait (mode A) answers only from a snapshot it read; a
notice below the token ends neither."""

from __future__ import annotations

import functools

import psycopg
import pytest
import trio
import trio.testing

from duckmesh.catalog.snapshots import SNAPSHOTS_CHANNEL
from duckmesh.errors import DuckMeshError
from duckmesh.query.barrier import wait_for_token, wait_visible
from duckmesh.runtime import Runtime
from tests.bus.contract import rec


def _notify(dsn: str, payload: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (SNAPSHOTS_CHANNEL, payload))


async def test_notices_end_waits_as_far_as_each_mode_allows(runtime: Runtime) -> None:
    rt = runtime
    await trio.to_thread.run_sync(rt.bus.publish, "default", [[rec("a"), rec("b"), rec("c")]])
    stop = trio.Event()
    visible: list[int | None] = []
    query_errors: list[DuckMeshError] = []

    async def receipt() -> None:
        visible.append(await wait_visible(rt.db, rt.bus, rt.notifications, "default", 3, 30))

    async def query() -> None:
        with pytest.raises(DuckMeshError) as err:
            await wait_for_token(rt.db, rt.bus, rt.notifications, "default", 3, 1.0)
        query_errors.append(err.value)

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(rt.notifications.listen, rt.dsn, stop=stop))
        nursery.start_soon(receipt)
        nursery.start_soon(query)
        await trio.testing.wait_all_tasks_blocked()
        # A publication below the token: both keep waiting.
        await trio.to_thread.run_sync(_notify, rt.dsn, "default:1:2")
        with trio.fail_after(10):
            while rt.notifications.watermarks.get("default") != (1, 2):
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert visible == []
        # One that covers it (no such snapshot in the catalog: the notice is
        # the only evidence). The receipt is answered with it ...
        await trio.to_thread.run_sync(_notify, rt.dsn, "default:2:3")
        with trio.fail_after(10):
            while not visible:
                await trio.sleep(0.01)
        assert visible == [2]
        # ... the query is not: it answers only from a snapshot it read.
        with trio.fail_after(10):
            while not query_errors:
                await trio.sleep(0.01)
        assert query_errors[0].error_code == "CONSISTENCY_TIMEOUT"
        stop.set()
