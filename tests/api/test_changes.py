"""``GET /v1/tables/{name}/changes``: net changes per key between two
snapshots, inserts of append-only tables, every result format, and a clear
refusal once the first snapshot's files are gone."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.api.helpers import assert_error
from tests.fixtures import EVENTS, ORDERS, LiveServer

ARROW = "application/vnd.apache.arrow.stream"


async def _write(srv: LiveServer, table: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    r = await srv.ingest(table, records, wait_for_visibility=True)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _rec(key: str, op: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"idempotency_key": key, "op": op, "payload": payload}


async def _changes(srv: LiveServer, table: str, **params: Any) -> dict[str, Any]:
    r = await srv.client.get(f"/v1/tables/{table}/changes", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_keyed_table_net_change_per_key(server: LiveServer) -> None:
    await server.create_table(ORDERS)
    first = await _write(
        server,
        "orders",
        [_rec(f"a{i}", "upsert", {"order_id": i, "status": "new"}) for i in (1, 2, 3)],
    )
    a = first["visible_snapshot_id"]
    await _write(server, "orders", [_rec("b2", "upsert", {"order_id": 2, "status": "paid"})])
    await _write(
        server,
        "orders",
        [
            _rec("b3", "delete", {"order_id": 3}),
            _rec("b4", "upsert", {"order_id": 4, "status": "new"}),
        ],
    )
    last = await _write(
        server,
        "orders",
        [
            _rec("c4", "delete", {"order_id": 4}),  # inserted and deleted in between: no change
            _rec("c5", "upsert", {"order_id": 5, "status": "new"}),
        ],
    )
    b = last["visible_snapshot_id"]

    body = await _changes(server, "orders", from_snapshot=a, to_snapshot=b)
    names = [c["name"] for c in body["columns"]]
    assert names == ["order_id", "status", "amount", "created_at", "_dm_token", "_dm_op"]
    got = [(row[0], row[1], row[5]) for row in body["rows"]]
    assert got == [(2, "paid", "upsert"), (3, None, "delete"), (5, "new", "upsert")]
    tokens = [row[4] for row in body["rows"]]
    assert tokens == sorted(tokens)
    assert first["max_visibility_token"] < tokens[0] <= last["max_visibility_token"]
    assert (body["from_snapshot"], body["to_snapshot"]) == (a, b)
    assert body["from_watermark"] == first["max_visibility_token"]
    assert body["truncated"] is False

    # From the beginning: every live key once, deletes of keys never live omitted.
    everything = await _changes(server, "orders", from_snapshot=0)
    assert [(row[0], row[5]) for row in everything["rows"]] == [
        (1, "upsert"),
        (2, "upsert"),
        (5, "upsert"),
    ]
    assert everything["to_snapshot"] == b  # to_snapshot defaults to the latest
    assert (await _changes(server, "orders", from_snapshot=b, to_snapshot=b))["rows"] == []


async def test_append_only_inserts_in_every_format(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    a = (await _write(server, "events", [_rec("e0", "insert", {"id": 0})]))["visible_snapshot_id"]
    await _write(
        server, "events", [_rec(f"e{i}", "insert", {"id": i, "kind": "k"}) for i in (1, 2, 3)]
    )
    expected = [[i, "k", None, "insert"] for i in (1, 2, 3)]
    body = await _changes(server, "events", from_snapshot=a, row_limit=10)
    assert [[r[0], r[1], r[2], r[4]] for r in body["rows"]] == expected

    url = f"/v1/tables/events/changes?from_snapshot={a}"
    r = await server.client.get(url, headers={"Accept": ARROW})
    assert r.status_code == 200, r.text
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("_dm_op").to_pylist() == ["insert"] * 3
    assert r.headers["DuckMesh-From-Snapshot"] == str(a)
    assert r.headers["DuckMesh-Truncated"] == "false"
    r = await server.client.get(url, headers={"Accept": "application/x-ndjson"})
    assert [[v[0], v[1], v[2], v[4]] for v in map(json.loads, r.text.splitlines())] == expected
    r = await server.client.get(url, headers={"Accept": "application/vnd.apache.parquet"})
    assert pq.read_table(io.BytesIO(r.content)).column("id").to_pylist() == [1, 2, 3]
    r = await server.client.get(url + "&row_limit=2", headers={"Accept": "text/csv"})
    header, *rows = list(csv.reader(io.StringIO(r.text)))
    assert header == ["id", "kind", "value", "_dm_token", "_dm_op"]
    assert [row[0] for row in rows] == ["1", "2"]
    assert r.headers["DuckMesh-Truncated"] == "true"


async def test_refusals(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    a = (await _write(server, "events", [_rec("e0", "insert", {"id": 0})]))["visible_snapshot_id"]
    b = (await _write(server, "events", [_rec("e1", "insert", {"id": 1})]))["visible_snapshot_id"]
    get = server.client.get
    assert_error(await get("/v1/tables/events/changes"), 400, "VALIDATION_FAILED")
    r = await get(f"/v1/tables/events/changes?from_snapshot={b}&to_snapshot={a}")
    assert_error(r, 400, "VALIDATION_FAILED")
    r = await get("/v1/tables/events/changes?from_snapshot=x")
    assert_error(r, 400, "VALIDATION_FAILED")
    r = await get("/v1/tables/events/changes?from_snapshot=1&to_snapshot=999")
    assert_error(r, 404, "SNAPSHOT_NOT_FOUND")
    r = await get("/v1/tables/nope/changes?from_snapshot=0")
    assert_error(r, 404, "TABLE_NOT_FOUND")
    r = await get("/v1/tables/events/changes?from_snapshot=0", headers={"Accept": "image/png"})
    assert_error(r, 406, "NOT_ACCEPTABLE")

    # What GC does to an expired snapshot: its (no longer shared) files are deleted.
    detail = (await get(f"/v1/snapshots/{a}")).json()
    for f in detail["tables"][0]["files"]:
        server.rt.store.delete(f["path"])
    r = await get(f"/v1/tables/events/changes?from_snapshot={a}&to_snapshot={a}")
    body = assert_error(r, 410, "SNAPSHOT_EXPIRED")
    assert body["context"]["snapshot_id"] == a
    assert "garbage-collected" in body["message"]
