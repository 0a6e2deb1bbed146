"""The query plane on S3 with its local cache, in process: a second query of
the same snapshot reads no object from S3 (counted by the S3-compatible test
server's own request log), and the cache stays within its byte bound under a
workload larger than the bound."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from duckmesh.storage.s3 import S3ObjectStore
from duckmesh_testing.s3server import S3TestServer
from tests.api.helpers import bearer, create_tenant, issue_key
from tests.fixtures import EVENTS, LiveServer, StartApp

TENANTS = ("t-a", "t-b", "t-c")


def s3_settings(server: S3TestServer, bucket: str) -> dict[str, str]:
    return {
        "object_store_url": f"s3://{bucket}/dm",
        "s3_endpoint_url": server.endpoint,
        "s3_region": "us-east-1",
    }


async def settled_reads(server: S3TestServer, bucket: str) -> int:
    """The server's object-read count once its log has caught up (a request
    is logged just after its response)."""
    last = -1
    while (now := server.object_reads(bucket)) != last:
        last = now
        await trio.sleep(0.3)
    return last


async def load_tenant(writer: LiveServer, tenant: str, rows: int) -> tuple[str, int]:
    """A tenant with an events table of ``rows`` rows in a few files; (key, token)."""
    await create_tenant(writer.rt, tenant)
    _, key = await issue_key(writer.rt, tenant, ["table_admin", "ingest_writer", "query_reader"])
    r = await writer.client.post("/v1/tables", json=EVENTS, headers=bearer(key))
    assert r.status_code == 201, r.text
    token = 0
    for start in range(0, rows, rows // 3):
        records = [
            {"idempotency_key": f"{tenant}-{i}", "payload": {"id": i, "kind": f"k{i % 7}" * 20}}
            for i in range(start, min(rows, start + rows // 3))
        ]
        r = await writer.client.post(
            "/v1/ingest/events",
            json={"records": records, "wait_for_visibility": True},
            headers=bearer(key),
        )
        assert r.status_code == 200, r.text
        token = r.json()["max_visibility_token"]
    return key, token


def disk_bytes(store: S3ObjectStore) -> int:
    files = [p for p in store.cache.root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if "_scratch" not in p.parts)


async def test_warm_queries_read_nothing_from_s3_and_the_cache_stays_bounded(
    start_app: StartApp,
    s3_server: S3TestServer,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3 = s3_settings(s3_server, s3_bucket)
    writer = await start_app(data_dir=tmp_path / "writer", **s3)
    loaded = {t: await load_tenant(writer, t, 600 + 300 * n) for n, t in enumerate(TENANTS)}
    assert isinstance(writer.rt.store, S3ObjectStore)
    sizes = {t: sum(o.size for o in writer.rt.store.list(t)) for t in TENANTS}
    bound = max(sizes.values()) * 3 // 2
    assert sum(sizes.values()) > bound  # the workload does not fit
    reader = await start_app(
        data_dir=tmp_path / "reader", role="api", object_cache_bytes=bound, **s3
    )
    assert isinstance(reader.rt.store, S3ObjectStore)
    sql = "select count(*), sum(id) from events"
    for n, tenant in enumerate(TENANTS):
        key, token = loaded[tenant]
        rows = 600 + 300 * n
        expected = [[rows, rows * (rows - 1) // 2]]
        before = await settled_reads(s3_server, s3_bucket)
        cold = await reader.client.post(
            "/v1/query",
            json={"sql": sql, "min_visibility_token": token},
            headers=bearer(key),
        )
        assert cold.status_code == 200, cold.text
        assert cold.json()["rows"] == expected
        after_cold = await settled_reads(s3_server, s3_bucket)
        assert after_cold > before  # the reader's cache was cold: it downloaded
        started = time.monotonic()
        warm = await reader.client.post(
            "/v1/query",
            json={"sql": sql, "snapshot_id": cold.json()["snapshot_id"]},
            headers=bearer(key),
        )
        assert warm.status_code == 200, warm.text
        assert warm.json()["rows"] == expected
        assert await settled_reads(s3_server, s3_bucket) == after_cold, time.monotonic() - started
        stats = reader.rt.store.cache.statistics()
        assert stats.bytes <= bound
        assert disk_bytes(reader.rt.store) == stats.bytes
    # The first tenant's files made room for the others.
    assert not all(reader.rt.store.cache.contains(o.key) for o in writer.rt.store.list(TENANTS[0]))


async def test_a_loaded_snapshot_whose_cached_files_were_evicted_loads_again(
    start_app: StartApp,
    s3_server: S3TestServer,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache evicts the files of a snapshot still loaded in a tenant's
    query database (another tenant needed the room): the tenant's next query
    loads the snapshot again (downloading its files) and answers, instead of
    reporting intact objects as DATA_FILE_CORRUPT."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3 = s3_settings(s3_server, s3_bucket)
    writer = await start_app(data_dir=tmp_path / "writer", **s3)
    loaded = {t: await load_tenant(writer, t, 600) for t in TENANTS[:2]}
    assert isinstance(writer.rt.store, S3ObjectStore)
    sizes = {t: sum(o.size for o in writer.rt.store.list(t)) for t in TENANTS[:2]}
    bound = max(sizes.values()) * 3 // 2  # one tenant's files fit, not both
    reader = await start_app(
        data_dir=tmp_path / "reader",
        role="api",
        object_cache_bytes=bound,
        query_result_cache_bytes=0,  # every query runs in DuckDB
        **s3,
    )
    assert isinstance(reader.rt.store, S3ObjectStore)
    sql = "select count(*), sum(id) from events"
    expected = [[600, 600 * 599 // 2]]

    async def ask(tenant: str, with_token: bool = True) -> None:
        key, token = loaded[tenant]
        body: dict[str, object] = {"sql": sql}
        if with_token:
            body["min_visibility_token"] = token
        r = await reader.client.post("/v1/query", json=body, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == expected

    first, second = TENANTS[:2]
    await ask(first)
    await ask(second)  # its download evicts the first tenant's files
    assert not all(reader.rt.store.cache.contains(o.key) for o in writer.rt.store.list(first))
    await ask(first)  # its snapshot is still loaded: it must be loaded again
    assert all(reader.rt.store.cache.contains(o.key) for o in writer.rt.store.list(first))
    # The same without a token (the one-hop path of ADR 0023).
    await ask(second)
    assert not all(reader.rt.store.cache.contains(o.key) for o in writer.rt.store.list(first))
    await ask(first, with_token=False)
    assert all(reader.rt.store.cache.contains(o.key) for o in writer.rt.store.list(first))
    # An object missing from the store itself is damage, not eviction: the
    # reload finds it gone and the table answers DATA_FILE_CORRUPT.
    await ask(second)  # evicts the first tenant's files again
    data_key = next(
        o.key for o in writer.rt.store.list(first) if not reader.rt.store.cache.contains(o.key)
    )
    assert writer.rt.store.delete(data_key)
    key, token = loaded[first]
    r = await reader.client.post(
        "/v1/query", json={"sql": sql, "min_visibility_token": token}, headers=bearer(key)
    )
    assert r.status_code == 500, r.text
    assert r.json()["error_code"] == "DATA_FILE_CORRUPT"
