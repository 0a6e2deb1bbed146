"""Trace ids on the columnar bus (issue 15): each ``bus_batch`` row names the
trace ids of the requests whose rows it holds — only those — on the
one-statement path and on the locked path; a request without a trace leaves
NULL, as batches written before migration 0008 have."""

from __future__ import annotations

from typing import Any

import psycopg
import trio

from duckmesh.bus.postgres import PostgresBus
from duckmesh.tracing import MAX_TRACE_IDS, bounded
from tests.bus.contract import ok, rec
from tests.fixtures import EVENTS, LiveServer


def _batches(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT first_token, last_token, trace_ids FROM bus_batch"
            " WHERE tenant_id = 'default' ORDER BY first_token"
        ).fetchall()


async def test_each_batch_names_the_traces_of_its_own_rows(server: LiveServer, dsn: str) -> None:
    events = (await server.create_table(EVENTS))["table_id"]
    other = (await server.create_table(dict(EVENTS, name="other")))["table_id"]
    bus = server.rt.bus
    assert isinstance(bus, PostgresBus)

    def r(key: str, table: str = events) -> Any:
        return rec(key, {"id": 1}, table=table)

    # One flush: two requests share the first run, a table change starts the
    # second, and the request without a trace writes the third.
    group = [[r("a"), r("b")], [r("c")], [r("d", other)], [r("e")]]
    results = await trio.to_thread.run_sync(bus.publish, "default", group, ["t1", "t2", "t3", None])
    assert [[x.token for x in ok(res)] for res in results] == [[1, 2], [3], [4], [5]]
    assert _batches(dsn) == [(1, 3, ["t1", "t2"]), (4, 4, ["t3"]), (5, 5, None)]

    # A retried key sends the flush the locked way: the trace still goes along.
    results = await trio.to_thread.run_sync(bus.publish, "default", [[r("a"), r("f")]], ["t4"])
    assert [x.token for x in ok(results[0])] == [1, 6]
    assert _batches(dsn)[-1] == (6, 6, ["t4"])


def test_bounded_keeps_the_first_distinct_ids_in_order() -> None:
    ids = [None, "a", "b", "a", *(f"x{i}" for i in range(100))]
    out = bounded(ids)
    assert out[:3] == ["a", "b", "x0"]
    assert len(out) == MAX_TRACE_IDS
    assert len(set(out)) == MAX_TRACE_IDS
