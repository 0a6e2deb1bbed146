"""Bulk uploads on POST /v1/ingest/{table}: CSV, NDJSON, Arrow IPC, Parquet.

Through the real HTTP app, Postgres bus and coordinator: an upload becomes
visible exactly as the same rows sent as JSON records do (types, NULLs,
zones, decimals), a retry is all duplicates, a changed body is 409, one bad
cell rejects everything, and media types / sizes are refused up front.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio

from tests.api.helpers import assert_error
from tests.fixtures import LiveServer, StartApp

COLUMNS: list[dict[str, Any]] = [
    {"name": "id", "type": "BIGINT", "nullable": False},
    {"name": "name", "type": "VARCHAR"},
    {"name": "amount", "type": "DECIMAL(10,2)"},
    {"name": "zoned", "type": "TIMESTAMPTZ"},
    {"name": "naive", "type": "TIMESTAMP"},
    {"name": "score", "type": "DOUBLE"},
    {"name": "day", "type": "DATE"},
    {"name": "ok", "type": "BOOLEAN"},
]
ROWS: list[dict[str, Any]] = [
    {
        "id": 1,
        "name": 'ä, "quoted"',
        "amount": "12.50",
        "zoned": "2024-03-01T10:00:00+02:00",
        "naive": "2024-03-01T10:00:00",
        "score": 1.5,
        "day": "2024-03-01",
        "ok": True,
    },
    {
        "id": 2,
        "name": None,
        "amount": None,
        "zoned": None,
        "naive": None,
        "score": None,
        "day": None,
        "ok": None,
    },
    {
        "id": 3,
        "name": "x",
        "amount": "-0.01",
        "zoned": "1999-12-31T23:59:59.123456Z",
        "naive": "0001-01-01T00:00:00",
        "score": -2e10,
        "day": "9999-12-31",
        "ok": False,
    },
]
SELECT = "select id, name, amount, zoned, naive, score, day, ok from {} order by id"


def _table(name: str, key: bool = True) -> dict[str, Any]:
    return {"name": name, "columns": COLUMNS, "primary_key": ["id"] if key else []}


def _csv(rows: list[dict[str, Any]], sep: str = ",") -> bytes:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        text = str(v).lower() if isinstance(v, bool) else str(v)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in f'"{sep}\n') else text

    lines = [sep.join(rows[0])] + [sep.join(cell(r[k]) for k in rows[0]) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def _arrow_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows with native Arrow types (text where the table casts)."""
    import datetime as dt
    import decimal

    def ts(v: str | None, tz: bool) -> dt.datetime | None:
        if v is None:
            return None
        value = dt.datetime.fromisoformat(v)
        return value.astimezone(dt.UTC) if tz else value

    return pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.int64()),
            "name": pa.array([r["name"] for r in rows], pa.string()),
            "amount": pa.array(
                [None if r["amount"] is None else decimal.Decimal(r["amount"]) for r in rows],
                pa.decimal128(10, 2),
            ),
            "zoned": pa.array([ts(r["zoned"], True) for r in rows], pa.timestamp("us", tz="UTC")),
            "naive": pa.array([ts(r["naive"], False) for r in rows], pa.timestamp("us")),
            "score": pa.array([r["score"] for r in rows], pa.float64()),
            "day": pa.array(
                [None if r["day"] is None else dt.date.fromisoformat(r["day"]) for r in rows],
                pa.date32(),
            ),
            "ok": pa.array([r["ok"] for r in rows], pa.bool_()),
        }
    )


def encode(kind: str, rows: list[dict[str, Any]]) -> tuple[bytes, str]:
    if kind == "csv":
        return _csv(rows), "text/csv"
    if kind == "ndjson":
        return "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/x-ndjson"
    table = _arrow_table(rows)
    sink = io.BytesIO()
    if kind == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue(), "application/vnd.apache.arrow.stream"
    pq.write_table(table, sink)
    return sink.getvalue(), "application/vnd.apache.parquet"


async def upload(
    srv: LiveServer,
    table: str,
    body: bytes,
    content_type: str,
    *,
    key: str | None = "req-1",
    encoding: str | None = None,
    **params: Any,
) -> Any:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return await srv.client.post(
        f"/v1/ingest/{table}", content=body, headers=headers, params=params
    )


async def rows_of(srv: LiveServer, table: str, token: int) -> list[Any]:
    q = await srv.query(SELECT.format(table), min_visibility_token=token)
    assert q.status_code == 200, q.text
    rows: list[Any] = q.json()["rows"]
    return rows


async def latest_token(srv: LiveServer) -> int:
    return await trio.to_thread.run_sync(srv.rt.bus.latest_token, "default")


FORMATS = ["csv", "ndjson", "arrow", "parquet"]


@pytest.mark.parametrize("kind", FORMATS)
async def test_round_trip_retry_conflict(server: LiveServer, kind: str) -> None:
    await server.create_table(_table("up"))
    await server.create_table(_table("rec"))
    records = [{"idempotency_key": str(r["id"]), "payload": r} for r in ROWS]
    ref = await server.ingest("rec", records)
    assert ref.status_code == 200, ref.text

    body, ctype = encode(kind, ROWS)
    r = await upload(server, "up", body, ctype, wait_for_visibility="true")
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["accepted_count"] == 3
    assert receipt["duplicate_count"] == 0
    assert receipt["last_token"] - receipt["first_token"] == 2
    assert receipt["first_token"] == ref.json()["max_visibility_token"] + 1
    assert receipt["status"] == "visible"

    got = await rows_of(server, "up", receipt["max_visibility_token"])
    expected = await rows_of(server, "rec", receipt["max_visibility_token"])
    assert got == expected  # the same values and types as the record path
    assert got[1] == [2, None, None, None, None, None, None, None]

    # A retry: all duplicates, nothing new.
    top = await latest_token(server)
    again = await upload(server, "up", body, ctype)
    assert again.status_code == 200, again.text
    assert again.json()["accepted_count"] == 0
    assert again.json()["duplicate_count"] == 3
    assert again.json()["max_visibility_token"] == receipt["last_token"]
    assert await latest_token(server) == top

    # The same key with another body: 409, nothing written.
    changed = [dict(ROWS[0], name="changed")]
    body2, _ = encode(kind, changed)
    r = await upload(server, "up", body2, ctype)
    assert_error(r, 409, "IDEMPOTENCY_CONFLICT")
    assert await latest_token(server) == top
    assert await rows_of(server, "up", top) == expected


@pytest.mark.parametrize("kind", FORMATS)
async def test_a_bad_cell_rejects_the_whole_upload(server: LiveServer, kind: str) -> None:
    await server.create_table(_table("up"))
    rows = [dict(ROWS[0], id=i) for i in range(1, 1001)]
    if kind in ("csv", "ndjson"):
        rows[737] = dict(rows[737], day="2024-02-30")
    else:
        rows[737] = dict(rows[737], score=float("nan"))
    body, ctype = encode(kind, rows)
    r = await upload(server, "up", body, ctype)
    err = assert_error(r, 400, "VALIDATION_FAILED")
    cells = err["context"]["errors"]
    assert cells[0]["row"] == 737, cells
    assert cells[0]["column"] == ("day" if kind in ("csv", "ndjson") else "score")
    assert await latest_token(server) == 0


async def test_nulls_missing_and_unknown_columns_are_named(server: LiveServer) -> None:
    await server.create_table(_table("up"))
    body = b"id,name,extra\n1,a,x\n,b,y\n"
    r = await upload(server, "up", body, "text/csv")
    cells = assert_error(r, 400, "VALIDATION_FAILED")["context"]["errors"]
    assert {"row": None, "column": "extra", "reason": "unknown column"} in cells
    r = await upload(server, "up", b"id,name\n1,a\n,b\n3,c\n", "text/csv")
    cells = assert_error(r, 400, "VALIDATION_FAILED")["context"]["errors"]
    assert cells == [{"row": 1, "column": "id", "reason": "must not be null"}]
    r = await upload(server, "up", b"name\na\n", "text/csv")
    cells = assert_error(r, 400, "VALIDATION_FAILED")["context"]["errors"]
    assert cells == [{"row": None, "column": "id", "reason": "required column missing"}]
    assert await latest_token(server) == 0


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_compressed_bodies(server: LiveServer, encoding: str) -> None:
    await server.create_table(_table("up"))
    body, ctype = encode("csv", ROWS)
    framed = gzip.compress(body) if encoding == "gzip" else _zstd_frame(body)
    r = await upload(server, "up", framed, ctype, encoding=encoding)
    assert r.status_code == 200, r.text
    got = await rows_of(server, "up", r.json()["max_visibility_token"])
    assert [row[0] for row in got] == [1, 2, 3]


def _zstd_frame(data: bytes) -> bytes:
    """A zstd stream as ``zstd`` or ``curl --compressed`` would send it."""
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


async def test_key_column_dedupes_rows(server: LiveServer) -> None:
    await server.create_table(_table("up"))
    rows = [{"k": f"r{r['id']}", **r} for r in ROWS]
    body = _csv(rows)
    r = await upload(server, "up", body, "text/csv", key=None, key_column="k")
    assert r.status_code == 200, r.text
    assert r.json()["accepted_count"] == 3
    more = [*rows, {"k": "r4", **dict(ROWS[0], id=4)}]
    r = await upload(server, "up", _csv(more), "text/csv", key=None, key_column="k")
    assert r.status_code == 200, r.text
    assert (r.json()["accepted_count"], r.json()["duplicate_count"]) == (1, 3)
    assert r.json()["first_token"] == 4
    changed = [dict(rows[0], name="other")]
    r = await upload(server, "up", _csv(changed), "text/csv", key=None, key_column="k")
    assert_error(r, 409, "IDEMPOTENCY_CONFLICT")
    got = await rows_of(server, "up", 4)
    assert [row[0] for row in got] == [1, 2, 3, 4]


async def test_idempotency_is_required_and_media_types_checked(server: LiveServer) -> None:
    await server.create_table(_table("up"))
    body, _ = encode("csv", ROWS)
    r = await upload(server, "up", body, "text/csv", key=None)
    assert_error(r, 400, "VALIDATION_FAILED")
    r = await upload(server, "up", body, "text/plain")
    assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await upload(server, "up", body, "text/csv", encoding="br")
    assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    r = await upload(server, "up", body, "text/csv", op="merge")
    assert_error(r, 400, "VALIDATION_FAILED")
    assert await latest_token(server) == 0


LIMIT = 64 * 1024


@pytest.fixture
async def small_server(start_app: StartApp) -> LiveServer:
    return await start_app(max_upload_bytes=LIMIT, upload_spool_bytes=1024)


async def test_upload_limit(small_server: LiveServer) -> None:
    srv = small_server
    await srv.create_table(_table("up"))
    rows = [dict(ROWS[0], id=i) for i in range(LIMIT // 40)]
    body = _csv(rows)
    assert len(body) > LIMIT
    # Declared too large: refused by its Content-Length.
    r = await upload(srv, "up", body, "text/csv")
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")

    # Streamed without a length: refused when the limit is passed.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    r = await srv.client.post(
        "/v1/ingest/up",
        content=chunks(),
        headers={"Content-Type": "text/csv", "Idempotency-Key": "s"},
    )
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    # A small gzip body that inflates past the limit.
    r = await upload(srv, "up", gzip.compress(body), "text/csv", encoding="gzip")
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    # Bigger than the in-memory threshold, within the limit: spooled and accepted.
    fits = _csv(rows[:100])
    assert 1024 < len(fits) < LIMIT
    r = await upload(srv, "up", fits, "text/csv", key="fits")
    assert r.status_code == 200, r.text
    assert r.json()["accepted_count"] == 100


async def test_records_and_uploads_interleaved_share_one_token_order(server: LiveServer) -> None:
    await server.create_table(
        {
            "name": "kv",
            "columns": [
                {"name": "id", "type": "BIGINT", "nullable": False},
                {"name": "v", "type": "VARCHAR"},
            ],
            "primary_key": ["id"],
        }
    )
    keys = range(20)
    spans: dict[str, tuple[int, int]] = {}

    async def by_records(n: int) -> None:
        name = f"rec{n}"
        records = [
            {"idempotency_key": f"{name}-{k}", "op": "upsert", "payload": {"id": k, "v": name}}
            for k in keys
        ]
        r = await server.ingest("kv", records)
        assert r.status_code == 200, r.text
        top = r.json()["max_visibility_token"]
        spans[name] = (top - len(records) + 1, top)

    async def by_upload(n: int) -> None:
        name = f"up{n}"
        body = _csv([{"id": k, "v": name} for k in keys])
        r = await upload(server, "kv", body, "text/csv", key=name, op="upsert")
        assert r.status_code == 200, r.text
        spans[name] = (r.json()["first_token"], r.json()["last_token"])

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(by_records, n)
            nursery.start_soon(by_upload, n)
    ordered = sorted(spans.items(), key=lambda item: item[1])
    expect = 1
    for _, (first, last) in ordered:  # contiguous, no gap, no overlap
        assert (first, last - first + 1) == (expect, len(keys))
        expect = last + 1
    winner = ordered[-1][0]
    q = await server.query("select id, v from kv order by id", min_visibility_token=expect - 1)
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[k, winner] for k in keys]


async def test_a_huge_declared_upload_is_refused_before_its_body(small_server: LiveServer) -> None:
    """10 GiB announced, 1 KiB sent: the 413 comes at once (nothing is read)."""
    srv = small_server
    await srv.create_table(_table("up"))
    port = srv.rt.config.http_port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    head = (
        "POST /v1/ingest/up HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {srv.key}\r\nContent-Type: text/csv\r\n"
        f"Idempotency-Key: huge\r\nContent-Length: {10 * 2**30}\r\n\r\n"
    )
    await stream.send_all(head.encode() + b"id\n" + b"1\n" * 512)
    answer = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    await stream.aclose()
    assert await latest_token(srv) == 0


async def test_event_time_partitions_upserts_and_deletes(server: LiveServer) -> None:
    table = _table("up")
    table["partition_by"] = {"event_time": "day"}
    await server.create_table(table)
    rows = [dict(ROWS[0], id=i, zoned=f"2024-03-0{1 + i % 2}T23:30:00-01:00") for i in range(6)]
    body, _ = encode("csv", rows)
    # Visible before the next upload: a commit holding both would write one
    # file per partition for the two batches together.
    r = await upload(
        server, "up", body, "text/csv", event_time_column="zoned", wait_for_visibility="true"
    )
    assert r.status_code == 200, r.text
    first_snapshot = r.json()["visible_snapshot_id"]
    upserts = [dict(rows[0], name="new"), dict(rows[0], id=1, name="new1")]
    body, _ = encode("csv", upserts)
    r = await upload(server, "up", body, "text/csv", key="u2", op="upsert")
    assert r.status_code == 200, r.text
    r = await upload(
        server, "up", b"id\n2\n3\n", "text/csv", key="d1", op="delete", wait_for_visibility="true"
    )
    assert r.status_code == 200, r.text
    got = await rows_of(server, "up", r.json()["max_visibility_token"])
    assert [(row[0], row[1]) for row in got] == [
        (0, "new"),
        (1, "new1"),
        (4, ROWS[0]["name"]),
        (5, ROWS[0]["name"]),
    ]
    snap = (await server.client.get(f"/v1/snapshots/{first_snapshot}")).json()
    first = [f for t in snap["tables"] for f in t["files"] if f["max_token"] <= 6]
    # 23:30 at -01:00 is the next day in UTC: 2024-03-02 and 2024-03-03.
    assert sorted(f["path"].split("/")[-2] for f in first) == ["date=2024-03-02", "date=2024-03-03"]
    assert all(f["record_count"] == 3 for f in first)


async def test_json_records_of_mixed_ops_and_uploads_resolve_by_token(server: LiveServer) -> None:
    """A JSON request mixing upserts and deletes (and an event time) is
    stored as a batch with per-row ops (ADR 0014): between two uploads of the
    same keys, every row resolves by token across both paths, and a retry of
    the request is all duplicates with the same tokens."""
    await server.create_table(_table("mix"))
    first = [{"id": k, "name": f"up1-{k}"} for k in (1, 2, 3, 4)]
    r = await upload(server, "mix", _csv(first), "text/csv", key="u1", op="upsert")
    assert r.status_code == 200, r.text
    assert (r.json()["first_token"], r.json()["last_token"]) == (1, 4)
    records = [
        {"idempotency_key": "j1", "op": "upsert", "payload": {"id": 3, "name": "json-3"}},
        {"idempotency_key": "j2", "op": "delete", "payload": {"id": 2}},
        {
            "idempotency_key": "j3",
            "op": "upsert",
            "payload": {"id": 4, "name": "json-4"},
            "event_time": "2024-03-01T10:00:00+02:00",
        },
        {"idempotency_key": "j4", "op": "insert", "payload": {"id": 5, "name": "json-5"}},
    ]
    r = await server.ingest("mix", records)
    assert r.status_code == 200, r.text
    assert (r.json()["accepted_count"], r.json()["max_visibility_token"]) == (4, 8)
    second = [{"id": 4, "name": "up2-4"}]
    r = await upload(server, "mix", _csv(second), "text/csv", key="u2", op="upsert")
    assert r.status_code == 200, r.text
    assert r.json()["first_token"] == 9
    retry = await server.ingest("mix", records)
    assert retry.status_code == 200, retry.text
    assert (retry.json()["duplicate_count"], retry.json()["max_visibility_token"]) == (4, 8)
    q = await server.query("select id, name from mix order by id", min_visibility_token=9)
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[1, "up1-1"], [3, "json-3"], [4, "up2-4"], [5, "json-5"]]
