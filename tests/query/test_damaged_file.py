"""Damage stays local on the query side (issue 15): with one Parquet file of
table A truncated, queries on table B and ``select 1`` keep working and a
query on A answers a non-retryable DATA_FILE_CORRUPT naming the file, before
and after the next snapshot (real app, Postgres, DuckDB, Parquet)."""

from __future__ import annotations

import os
from typing import Any

from duckmesh.catalog import reads
from tests.api.helpers import assert_error
from tests.fixtures import LiveServer, StartApp


def _table(name: str) -> dict[str, Any]:
    return {"name": name, "columns": [{"name": "id", "type": "BIGINT"}]}


async def _ingest(srv: LiveServer, table: str, ids: range) -> int:
    records = [{"idempotency_key": f"{table}{i}", "payload": {"id": i}} for i in ids]
    r = await srv.ingest(table, records)
    assert r.status_code == 200, r.text
    token: int = r.json()["max_visibility_token"]
    return token


async def _rows(srv: LiveServer, sql: str, **kw: Any) -> Any:
    if "min_visibility_token" in kw:  # a loaded machine may take seconds to publish
        kw["consistency_timeout_ms"] = 30_000
    r = await srv.query(sql, **kw)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


async def _files_of(srv: LiveServer, table: str) -> list[str]:
    def load(c: Any) -> list[str]:
        snap = reads.latest_snapshot(c, "default")
        assert snap is not None
        [table_id] = [t.table_id for t in reads.list_tables(c, "default") if t.name == table]
        files = reads.snapshot_files(c, "default", snap.snapshot_id)
        return [f.path for f in files if f.table_id == table_id]

    result: list[str] = await srv.rt.db.run(load, transaction=False)
    return result


def _assert_corrupt(srv: LiveServer, r: Any, key: str) -> None:
    body = assert_error(r, 500, "DATA_FILE_CORRUPT")
    assert body["retryable"] is False
    assert body["context"]["table"] == "a"
    assert body["context"]["file"] == key
    assert key in body["message"]
    assert str(srv.rt.config.data_dir) not in body["message"]


async def test_a_truncated_file_hurts_only_its_table(start_app: StartApp) -> None:
    srv = await start_app(query_result_cache_bytes=0)
    await srv.create_table(_table("a"))
    await srv.create_table(_table("b"))
    await _ingest(srv, "a", range(3))
    token = await _ingest(srv, "b", range(4))
    # Views built while the file was whole: the damage is found at query time.
    assert await _rows(srv, "select count(*) from a", min_visibility_token=token) == [[3]]
    [key] = await _files_of(srv, "a")
    path = srv.rt.store.local_path(key)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)

    for b_rows in (4, 6):  # before the next snapshot, then after it
        assert await _rows(srv, "select 1") == [[1]]
        assert await _rows(srv, "select count(*) from b") == [[b_rows]]
        _assert_corrupt(srv, await srv.query("select count(*) from a"), key)
        _assert_corrupt(srv, await srv.query("select * from b join a using (id)"), key)
        # A CTE of the same name is not the damaged table.
        assert await _rows(srv, "with a as (select 7 as x) select x from a") == [[7]]
        if b_rows == 4:
            token = await _ingest(srv, "b", range(4, 6))
            await _rows(srv, "select 1", min_visibility_token=token)
