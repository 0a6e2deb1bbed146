"""The Python client against the real server: every method, typed errors,
retries that keep their idempotency keys, and the read-your-writes session.

The blocking ``Client`` runs in a worker thread (the server shares this
test's Trio loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
import trio

from duckmesh.client import AsyncClient, Client, errors, query_info
from duckmesh.errors import ERROR_CODES
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ORDERS, LiveServer, StartApp


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def test_every_error_code_has_its_exception() -> None:
    for code in ERROR_CODES:
        cls = errors.error_class(code)
        assert cls is not errors.ApiError, code
        assert cls.error_code == code
    assert errors.error_class("SOMETHING_NEW") is errors.ApiError


async def test_sync_client_every_method(server: LiveServer) -> None:
    def scenario() -> None:
        with Client(server.base_url, BOOTSTRAP_KEY) as dm:
            created = dm.create_table(
                "orders",
                ORDERS["columns"],  # type: ignore[arg-type]
                primary_key=["order_id"],
            )
            assert created["name"] == "orders"
            dm.create_table("events", {"id": "BIGINT", "kind": "VARCHAR", "value": "DOUBLE"})
            assert {t["name"] for t in dm.list_tables()} == {"orders", "events"}
            assert dm.get_table("events")["primary_key"] == []
            with pytest.raises(errors.TableExists):
                dm.create_table("events", {"id": "BIGINT"})

            first = dm.ingest(
                "orders",
                [{"order_id": i, "status": "new", "amount": i * 1.5} for i in range(3)],
                op="upsert",
                wait=True,
            )
            assert (first.accepted_count, first.duplicate_count) == (3, 0)
            assert first.visible_snapshot_id is not None
            arrow = pa.table({"id": [1, 2, 3, 4], "kind": ["a", "b", "a", "c"]})
            uploaded = dm.ingest("events", arrow, wait=True)
            assert (uploaded.accepted_count, uploaded.requests) == (4, 1)
            dm.ingest("orders", [{"order_id": 0}], op="delete", wait=True)

            table = dm.query(
                "select order_id, status from orders where amount > ? order by 1", params=[0]
            )
            assert table.to_pylist() == [
                {"order_id": 1, "status": "new"},
                {"order_id": 2, "status": "new"},
            ]
            info = query_info(table)
            assert info.snapshot_id is not None
            assert info.max_visibility_token >= first.max_visibility_token
            assert info.truncated is False
            counts = dm.query("select kind, count(*) n from events group by 1 order by 1")
            assert counts.column("n").to_pylist() == [2, 1, 1]

            old = dm.query("select count(*) n from orders", snapshot_id=first.visible_snapshot_id)
            assert old.column("n").to_pylist() == [3]
            snaps = dm.snapshots(limit=100)
            assert snaps[0]["snapshot_id"] == info.snapshot_id
            schema = dm.schema()
            assert {t["name"] for t in schema["tables"]} == {"orders", "events"}

            feed = dm.changes("orders", first.visible_snapshot_id, info.snapshot_id)
            assert feed.column("order_id").to_pylist() == [0]
            assert feed.column("_dm_op").to_pylist() == ["delete"]
            with pytest.raises(errors.NotConfigured):
                dm.translate("how many orders?")

            with pytest.raises(errors.SqlError) as caught:
                dm.query("select * from nowhere")
            assert caught.value.status == 400
            assert caught.value.trace_id
            with pytest.raises(errors.TokenScopeMismatch):
                dm.query("select 1", snapshot_id=info.snapshot_id, min_visibility_token=10**9)
            dm.drop_table("events")
            with pytest.raises(errors.TableNotFound):
                dm.get_table("events")
        bad = Client(server.base_url, "dmk_wrong_key_0000000000000000000000")
        with bad, pytest.raises(errors.Unauthenticated):
            bad.list_tables()

    await in_thread(scenario)


async def test_async_client_and_session(server: LiveServer) -> None:
    async with AsyncClient(server.base_url, BOOTSTRAP_KEY) as dm:
        await dm.create_table("events", {"id": "BIGINT", "kind": "VARCHAR", "value": "DOUBLE"})
        assert [t["name"] for t in await dm.list_tables()] == ["events"]
        assert (await dm.get_table("events"))["name"] == "events"
        session = dm.session()
        # Two requests, no token passed by hand: the query waits for the write.
        for round_ in range(3):
            written = await session.ingest(
                "events", [{"id": round_ * 10 + i, "kind": "k"} for i in range(10)]
            )
            assert written.visible_snapshot_id is None  # not waited for
            seen = await session.query("select count(*) n from events")
            assert seen.column("n").to_pylist() == [10 * (round_ + 1)]
            assert query_info(seen).max_visibility_token >= written.max_visibility_token
        assert session.token >= written.max_visibility_token
        assert (await dm.schema())["tables"][0]["name"] == "events"
        assert await dm.snapshots()
        with pytest.raises(errors.SqlRejected):
            await dm.query("drop table events")
        await dm.drop_table("events")
        assert await dm.list_tables() == []


async def test_sync_session_reads_its_writes(server: LiveServer) -> None:
    await server.create_table(EVENTS)

    def scenario() -> list[int]:
        with Client(server.base_url, BOOTSTRAP_KEY) as dm:
            session = dm.session()
            counts = []
            for round_ in range(3):
                session.ingest("events", pa.table({"id": [round_], "kind": ["x"]}))
                counts.append(session.query("select count(*) n from events").column("n")[0])
            return [c.as_py() for c in counts]

    assert await in_thread(scenario) == [1, 2, 3]


@pytest.mark.parametrize("shape", ["records", "arrow"])
async def test_retry_after_a_lost_answer_writes_no_duplicate(
    start_app: StartApp, shape: str
) -> None:
    srv = await start_app(enable_faults=True)
    await srv.create_table(ORDERS)
    rows = [{"order_id": i, "status": "s"} for i in range(5)]
    data: Any = rows if shape == "records" else pa.Table.from_pylist(rows)
    # The first answer is lost after the write: the client retries the same keys.
    srv.rt.faults.arm("api.ingest.after_append", "raise", count=1)

    def scenario() -> tuple[Any, pa.Table]:
        with Client(srv.base_url, BOOTSTRAP_KEY) as dm:
            result = dm.ingest("orders", data, op="upsert", wait=True)
            table = dm.query("select count(*) n, count(distinct order_id) k from orders")
            return result, table

    result, table = await in_thread(scenario)
    assert srv.rt.faults.fired("api.ingest.after_append") == 1
    assert result.requests == 1
    assert (result.accepted_count, result.duplicate_count) == (0, 5)  # the retry's receipt
    assert table.to_pylist() == [{"n": 5, "k": 5}]


async def test_retries_give_up_with_the_typed_error(start_app: StartApp) -> None:
    srv = await start_app(enable_faults=True)
    await srv.create_table(EVENTS)
    srv.rt.faults.arm("api.ingest.after_append", "raise", count=3)

    def scenario() -> None:
        with Client(srv.base_url, BOOTSTRAP_KEY, retries=2) as dm:
            with pytest.raises(errors.Internal) as caught:
                dm.ingest("events", [{"id": 1}])
            assert caught.value.retryable

    await in_thread(scenario)
    assert srv.rt.faults.fired("api.ingest.after_append") == 3


def test_connection_failure_is_typed() -> None:
    from duckmesh_testing.procs import free_port

    dm = Client(f"http://127.0.0.1:{free_port()}", "k", retries=1)
    with dm, pytest.raises(errors.ConnectionFailed):
        dm.list_tables()
