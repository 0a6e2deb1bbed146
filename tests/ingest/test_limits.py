"""Per-tenant ingest rate limits: whole requests refused with 429, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from duckmesh.config import Config
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.limits import (
    STORAGE_REFRESH_MAX_S,
    STORAGE_REFRESH_MIN_S,
    RateLimiter,
    StorageQuota,
)
from duckmesh.runtime import Runtime, build_runtime, migrate_and_bootstrap
from tests.fixtures import EVENTS, start_server


def test_bucket_refills_at_the_rate() -> None:
    limiter = RateLimiter(100)
    limiter.take("t", 100, now=0.0)
    with pytest.raises(DuckMeshError) as refused:
        limiter.take("t", 1, now=0.0)
    assert refused.value.error_code == "RATE_LIMITED"
    assert refused.value.context["retry_after_s"] == 1
    limiter.take("t", 50, now=0.5)  # half a second refills half the bucket
    limiter.take("other", 100, now=0.5)  # tenants have their own buckets
    with pytest.raises(DuckMeshError):
        limiter.take("t", 1, now=0.5)


def test_limiters_sharing_a_directory_share_each_tenants_bucket(tmp_path: Path) -> None:
    # Two API workers of a process group (ADR 0012): one budget per tenant, not one each.
    first = RateLimiter(100, shared_dir=tmp_path)
    second = RateLimiter(100, shared_dir=tmp_path)
    first.take("t", 80, now=0.0)
    with pytest.raises(DuckMeshError) as refused:
        second.take("t", 80, now=0.0)
    assert refused.value.error_code == "RATE_LIMITED"
    second.take("t", 20, now=0.0)
    second.take("other", 100, now=0.0)
    first.take("t", 50, now=0.5)  # the shared bucket refills at the rate too
    with pytest.raises(DuckMeshError):
        second.take("t", 1, now=0.5)


def test_more_than_one_seconds_worth_never_fits_and_is_not_retryable() -> None:
    limiter = RateLimiter(100)
    with pytest.raises(DuckMeshError) as refused:
        limiter.take("t", 101, now=0.0)
    assert refused.value.error_code == "PAYLOAD_TOO_LARGE"
    assert refused.value.retryable is False
    assert "100 records/s" in refused.value.message
    assert refused.value.context == {"limit_records_per_s": 100, "requested": 101}
    limiter.take("t", 100, now=0.0)  # the refusal spent nothing


def test_retry_after_is_the_wait_until_the_request_fits() -> None:
    limiter = RateLimiter(100)
    limiter.take("t", 100, now=0.0)
    with pytest.raises(DuckMeshError) as refused:
        limiter.take("t", 40, now=0.1)  # 10 tokens back, 30 short: 0.3 s
    assert "retry in 0.30 s" in refused.value.message
    assert refused.value.context["retry_after_s"] == 1  # whole seconds, rounded up
    limiter.take("t", 40, now=0.4)  # and after that wait it fits


def test_zero_rate_means_unlimited() -> None:
    limiter = RateLimiter(0)
    for _ in range(100):
        limiter.take("t", 1_000_000)


async def test_over_the_limit_is_429_and_writes_nothing(
    make_config: Callable[..., Config], dsn: str, nursery: trio.Nursery
) -> None:
    rt = build_runtime(make_config(ingest_rate_limit=20), dsn=dsn)
    migrate_and_bootstrap(rt)
    server = await start_server(rt, nursery)
    try:
        await server.create_table(EVENTS)
        ok = await server.ingest(
            "events", [{"idempotency_key": f"a{i}", "payload": {"id": i}} for i in range(15)]
        )
        assert ok.status_code == 200
        refused = await server.ingest(
            "events", [{"idempotency_key": f"b{i}", "payload": {"id": 100 + i}} for i in range(15)]
        )
        assert refused.status_code == 429
        assert refused.json()["error_code"] == "RATE_LIMITED"
        assert int(refused.headers["Retry-After"]) >= 1
        assert rt.bus.latest_token("default") == 15  # nothing of the refused request
        too_big = await server.ingest(
            "events", [{"idempotency_key": f"c{i}", "payload": {"id": 200 + i}} for i in range(21)]
        )
        assert too_big.status_code == 413  # can never fit: not a retryable 429
        body = too_big.json()
        assert body["error_code"] == "PAYLOAD_TOO_LARGE"
        assert body["retryable"] is False
        assert "20 records/s" in body["message"]
        assert "Retry-After" not in too_big.headers
        assert rt.bus.latest_token("default") == 15
    finally:
        await server.client.aclose()
        assert rt.root is not None
        await rt.root.stop()
        rt.close()


async def test_lag_reports_quarantined_records(server: Any) -> None:
    import hashlib
    import json

    from duckmesh.bus import IngestRecord

    await server.create_table(EVENTS)
    text = json.dumps({"id": 1})
    bogus = IngestRecord(
        "no-such-table", "k", "insert", text, hashlib.sha256(text.encode()).digest(), None, 1
    )
    server.rt.bus.publish("default", [[bogus]])
    r = await server.query("select 1", min_visibility_token=1)
    assert r.status_code == 200
    lag = (await server.client.get("/v1/lag")).json()
    assert lag["quarantined_records"] == 1
    assert lag["recent_quarantine"][0]["reason"] == "table not found"
    assert lag["recent_quarantine"][0]["idempotency_key"] == "k"
    assert lag["pending_records"] == 0


async def test_storage_quota_reads_the_catalog_once_per_interval(runtime: Runtime) -> None:
    """Stored bytes are cached: re-read only when the tenant's snapshot moved
    (at most once a second) or after STORAGE_REFRESH_MAX_S, never per request."""
    latest = {"default": 1}
    now = [0.0]
    quota = StorageQuota(runtime.db, 100, latest.get, clock=lambda: now[0])
    assert await quota.used("default") == 0

    def add_file(conn: Any) -> None:
        conn.execute(
            "INSERT INTO data_file (file_id, tenant_id, table_id, path, format, schema_version,"
            " record_count, size_bytes, checksum, min_token, max_token, created_at, added_in)"
            " VALUES ('f1', 'default', 't', 'p', 'parquet', 1, 1, 150, 'c', 1, 1, now(), 2)"
        )

    await runtime.db.run(add_file)
    await quota.check("default")  # cached 0 bytes: no catalog read
    latest["default"] = 2
    now[0] = STORAGE_REFRESH_MIN_S / 2
    assert await quota.used("default") == 0  # moved, but read too recently
    now[0] = STORAGE_REFRESH_MIN_S + 0.1
    assert await quota.used("default") == 150
    with pytest.raises(DuckMeshError) as refused:
        await quota.check("default")
    assert refused.value.error_code == "QUOTA_EXCEEDED"
    assert refused.value.context == {
        "quota": "storage_bytes",
        "used_bytes": 150,
        "limit_bytes": 100,
        "retry_after_s": 30,
    }
    await quota.check("other")  # another tenant stores nothing
    await runtime.db.run(lambda c: c.execute("UPDATE data_file SET removed_in = 3"))
    now[0] += STORAGE_REFRESH_MIN_S * 2  # snapshot unchanged: kept until the TTL
    assert await quota.used("default") == 150
    now[0] += STORAGE_REFRESH_MAX_S
    assert await quota.used("default") == 0
    await StorageQuota(runtime.db, 0, latest.get).check("default")  # 0 = unlimited
