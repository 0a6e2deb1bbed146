"""Result formats of ``POST /v1/query`` chosen by ``Accept`` (issue 17): Arrow
IPC stream, CSV, NDJSON and Parquet equal the JSON result, honour row_limit
with the truncation header, and go through the same sandbox as JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio

from tests.api.helpers import assert_error, eventually
from tests.fixtures import LiveServer, StartApp

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
NDJSON = "application/x-ndjson"
CSV = "text/csv"


async def ask(srv: LiveServer, sql: str, accept: str, **kw: Any) -> httpx.Response:
    return await srv.client.post("/v1/query", json={"sql": sql, **kw}, headers={"Accept": accept})


@pytest.fixture
async def loaded(server: LiveServer) -> tuple[LiveServer, int]:
    """A table with timestamps, decimals, NULLs and nested values; its token."""
    await server.create_table(
        {
            "name": "orders",
            "columns": [
                {"name": "order_id", "type": "BIGINT", "nullable": False},
                {"name": "status", "type": "VARCHAR"},
                {"name": "amount", "type": "DECIMAL(10, 2)"},
                {"name": "placed", "type": "TIMESTAMP"},
                {"name": "seen", "type": "TIMESTAMPTZ"},
                {"name": "tags", "type": "VARCHAR[]"},
            ],
            "primary_key": ["order_id"],
        }
    )
    records = [
        {
            "idempotency_key": f"k{i}",
            "op": "upsert",
            "payload": {
                "order_id": i,
                "status": None if i % 3 == 0 else f"s{i}",
                "amount": None if i % 4 == 0 else f"{i}.25",
                "placed": f"2026-01-{1 + i % 28:02d}T10:00:00",
                "seen": None if i % 5 == 0 else f"2026-02-{1 + i % 28:02d}T10:00:00Z",
                "tags": None if i % 2 else [f"t{i}", "x"],
            },
        }
        for i in range(50)
    ]
    r = await server.ingest("orders", records, wait_for_visibility=True)
    assert r.status_code == 200, r.text
    return server, r.json()["max_visibility_token"]


SQL = "SELECT order_id, status, amount, placed, seen, tags FROM orders ORDER BY order_id"
FLAT = "SELECT order_id, status, amount, placed, seen FROM orders ORDER BY order_id"


async def json_rows(srv: LiveServer, sql: str, token: int) -> list[list[Any]]:
    r = await srv.query(sql, min_visibility_token=token)
    assert r.status_code == 200, r.text
    rows: list[list[Any]] = r.json()["rows"]
    return rows


def as_json_values(table: pa.Table) -> list[list[Any]]:
    """Arrow values in the JSON result's notation (decimal strings, ISO times)."""
    out = []
    for row in table.to_pylist():
        values = []
        for value in row.values():
            if value is None or isinstance(value, (int, str, list)):
                values.append(value)
            elif hasattr(value, "tzinfo") and value.tzinfo is not None:
                values.append(value.isoformat().replace("+00:00", "Z"))
            elif hasattr(value, "isoformat"):
                values.append(value.isoformat())
            else:  # Decimal
                values.append(format(value, "f"))
        out.append(values)
    return out


async def test_arrow_result_equals_the_json_result(loaded: tuple[LiveServer, int]) -> None:
    srv, token = loaded
    r = await ask(srv, SQL, ARROW, min_visibility_token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == ARROW
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.schema.field("amount").type == pa.decimal128(10, 2)
    assert pa.types.is_timestamp(table.schema.field("placed").type)
    assert table.schema.field("seen").type.tz in ("UTC", "Etc/UTC")
    assert as_json_values(table) == await json_rows(srv, SQL, token)
    assert table.column("status").null_count == 17
    assert int(r.headers["DuckMesh-Max-Visibility-Token"]) >= token
    assert int(r.headers["DuckMesh-Snapshot-Id"]) > 0
    assert r.headers["DuckMesh-Truncated"] == "false"
    assert int(r.headers["DuckMesh-Scanned-Files"]) >= 1


async def test_parquet_ndjson_and_csv_round_trip(loaded: tuple[LiveServer, int]) -> None:
    srv, token = loaded
    expected = await json_rows(srv, SQL, token)

    r = await ask(srv, SQL, PARQUET, min_visibility_token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == PARQUET
    assert as_json_values(pq.read_table(io.BytesIO(r.content))) == expected

    r = await ask(srv, SQL, NDJSON, min_visibility_token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == NDJSON
    assert [json.loads(line) for line in r.text.splitlines()] == expected

    r = await ask(srv, FLAT, CSV, min_visibility_token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(CSV)
    header, *rows = list(csv.reader(io.StringIO(r.text)))
    assert header == ["order_id", "status", "amount", "placed", "seen"]
    flat = await json_rows(srv, FLAT, token)
    assert [row[0] for row in rows] == [str(row[0]) for row in flat]
    assert [row[2] for row in rows] == ["" if v[2] is None else v[2] for v in flat]
    # CSV cannot carry a list column: refused before any byte, with the error body.
    body = assert_error(await ask(srv, SQL, CSV), 400, "VALIDATION_FAILED")
    assert body["context"]["columns"] == ["tags"]


async def test_row_limit_is_honoured_with_the_truncation_header(server: LiveServer) -> None:
    sql = "SELECT i, i::VARCHAR AS s FROM range(100000) t(i)"
    for accept in (ARROW, PARQUET):
        r = await ask(server, sql, accept, row_limit=70_000)
        assert r.status_code == 200, r.text
        reader = pa.ipc.open_stream if accept == ARROW else pq.read_table
        source = r.content if accept == ARROW else io.BytesIO(r.content)
        table = reader(source)
        table = table.read_all() if accept == ARROW else table
        assert table.num_rows == 70_000
        assert table.column("i").to_pylist()[-1] == 69_999
        assert r.headers["DuckMesh-Truncated"] == "true"
        assert r.headers["DuckMesh-Row-Limit"] == "70000"
    r = await ask(server, sql, NDJSON, row_limit=100_000)
    assert len(r.text.splitlines()) == 100_000
    assert r.headers["DuckMesh-Truncated"] == "false"
    r = await ask(server, "SELECT 1 AS a WHERE false", ARROW)
    table = pa.ipc.open_stream(r.content).read_all()
    assert (table.num_rows, table.column_names) == (0, ["a"])
    assert r.headers["DuckMesh-Truncated"] == "false"


async def test_unknown_accept_is_406_and_json_stays_the_default(server: LiveServer) -> None:
    body = assert_error(await ask(server, "SELECT 1", "image/png"), 406, "NOT_ACCEPTABLE")
    assert ARROW in body["context"]["offered"]
    for accept in ("", "*/*", "application/json", "application/*;q=0.5, text/html"):
        r = await ask(server, "SELECT 1 AS a", accept)
        assert r.status_code == 200, (accept, r.text)
        assert r.json()["rows"] == [[1]]
    r = await ask(server, "SELECT 1 AS a", f"{NDJSON};q=0.9, {ARROW}")
    assert r.headers["content-type"] == ARROW


@pytest.mark.parametrize("accept", [ARROW, CSV, NDJSON, PARQUET])
async def test_the_sandbox_applies_in_every_format(server: LiveServer, accept: str) -> None:
    outside = "SELECT * FROM read_csv('/etc/passwd')"
    assert_error(await ask(server, outside, accept), 400, "SQL_REJECTED")
    assert_error(await ask(server, "DROP TABLE x", accept), 400, "SQL_REJECTED")
    assert_error(await ask(server, "SELECT * FROM nowhere", accept), 400, "SQL_ERROR")
    r = await ask(server, "SELECT ?::INTEGER + 1 AS a", accept, params=[41])
    assert r.status_code == 200, r.text


async def test_a_stream_holds_its_slots_until_the_client_goes_away(
    start_app: StartApp,
) -> None:
    """A result larger than the read-ahead: while the client has read only the
    headers the query holds its tenant slot (a second query waits); when the
    client closes the response the worker stops and the slots come back."""
    srv = await start_app(tenant_query_concurrency=1, query_row_limit=1_000_000)
    slots = srv.rt.queries._tenant_slots("default")
    big = "SELECT i, repeat('x', 200) AS pad FROM range(1000000) t(i)"
    async with srv.client.stream(
        "POST", "/v1/query", json={"sql": big}, headers={"Accept": ARROW}
    ) as r:
        assert r.status_code == 200
        assert r.headers["DuckMesh-Truncated"] == "unknown"  # past the read-ahead
        assert slots.statistics().borrowed_tokens == 1

        async def second() -> None:
            answer = await srv.query("SELECT 1 AS a")
            assert answer.json()["rows"] == [[1]]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)

            async def queued() -> bool:
                return slots.statistics().tasks_waiting == 1

            await eventually(queued)
            assert slots.statistics().borrowed_tokens == 1
            await r.aclose()  # the client goes away mid-stream
    # the nursery ended: the second query got the slot and answered

    async def free() -> bool:
        return slots.statistics().borrowed_tokens == 0

    await eventually(free, timeout=10)


async def test_ui_schema_describes_the_latest_snapshot(server: LiveServer) -> None:
    r = await server.client.get("/v1/ui/schema")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "snapshot_id": None,
        "snapshot_time": None,
        "max_visibility_token": 0,
        "tables": [],
    }
    await server.create_table(
        {
            "name": "events",
            "columns": [{"name": "n", "type": "BIGINT"}, {"name": "at", "type": "TIMESTAMPTZ"}],
            "partition_by": {"event_time": "day"},
        }
    )
    await server.create_table(
        {"name": "users", "columns": [{"name": "id", "type": "INTEGER"}], "primary_key": ["id"]}
    )
    r = await server.ingest(
        "events",
        [
            {"idempotency_key": f"e{i}", "payload": {"n": i, "at": "2026-01-01T00:00:00Z"}}
            for i in range(7)
        ],
        wait_for_visibility=True,
    )
    for i in range(2):  # two commits: two stored versions of one key
        r = await server.ingest(
            "users",
            [{"idempotency_key": f"u{i}", "op": "upsert", "payload": {"id": 1}}],
            wait_for_visibility=True,
        )
    token = r.json()["max_visibility_token"]
    body = (await server.client.get("/v1/ui/schema")).json()
    assert body["max_visibility_token"] >= token
    events, users = body["tables"]
    assert events["name"] == "events"
    assert [c["name"] for c in events["columns"]] == ["n", "at"]
    assert events["columns"][1]["type"] == "TIMESTAMPTZ"
    assert events["partition_by"] == {"event_time": "day"}
    assert (events["row_count"], events["stored_records"]) == (7, 7)
    assert events["files"] >= 1
    assert events["size_bytes"] > 0
    assert users["primary_key"] == ["id"]
    assert users["row_count"] is None
    assert users["stored_records"] == 2
    r = await server.query("SELECT count(*) FROM events", min_visibility_token=token)
    assert r.json()["rows"] == [[events["row_count"]]]
