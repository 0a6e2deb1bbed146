"""DuckMesh across hosts on one S3 bucket and one Postgres, as real processes.

- Multi-host simulation: api, coordinator and maintenance processes with
  their own data directories (no shared disk), plus a fourth, query-only api
  process; results match through both; no Parquet file under any local
  ``objects/``; compaction and GC run against the bucket.
- Fault: the S3-compatible test server goes away for 10 s during steady
  ingest; acks continue, readiness and lag say what is happening, nothing
  acknowledged is lost and visibility resumes within seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyarrow import fs as pafs

from duckmesh.config import Config
from duckmesh.storage.factory import s3_filesystem
from duckmesh_testing.s3server import S3TestServer
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ServerProcess

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
SQL = "select count(*), sum(id), min(id), max(id) from events"


def s3_env(server: S3TestServer, bucket: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {**server.store_env(bucket), "DUCKMESH_DATA_DIR": str(data_dir), **extra}


def bucket_keys(server: S3TestServer, bucket: str) -> set[str]:
    config = Config(s3_endpoint_url=server.endpoint, s3_region="us-east-1")
    fs = s3_filesystem(config)
    base = f"{bucket}/dm/"
    selector = pafs.FileSelector(base, recursive=True)
    return {i.path[len(base) :] for i in fs.get_file_info(selector) if i.size}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in found)


def ingest(client: httpx.Client, start: int, count: int) -> httpx.Response:
    records = [
        {"idempotency_key": f"k{i}", "payload": {"id": i, "kind": "x"}}
        for i in range(start, start + count)
    ]
    return client.post("/v1/ingest/events", json={"records": records})


def strict_query(client: httpx.Client, token: int, timeout_ms: int = 30_000) -> httpx.Response:
    return client.post(
        "/v1/query",
        json={"sql": SQL, "min_visibility_token": token, "consistency_timeout_ms": timeout_ms},
    )


def test_roles_on_separate_hosts_share_only_postgres_and_the_bucket(
    spawn_server: Callable[..., ServerProcess],
    s3_server: S3TestServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    def host(name: str, **extra: str) -> ServerProcess:
        return spawn_server(**s3_env(s3_server, s3_bucket, tmp_path / name, **extra))

    api = host("api-host")
    api.start(role="api")
    coordinator = host("coordinator-host")
    maintenance = host(
        "maintenance-host",
        DUCKMESH_COMPACTION_INTERVAL_MS="300",
        DUCKMESH_COMPACTION_MIN_FILES="3",
        DUCKMESH_MAINTENANCE_INTERVAL_MS="500",
        DUCKMESH_SNAPSHOT_RETAIN_COUNT="1",
        DUCKMESH_SNAPSHOT_RETAIN_MS="0",
        DUCKMESH_GC_SAFETY_WINDOW_MS="1000",
    )
    reader = host("query-host")
    coordinator.start(role="coordinator", wait=False)
    maintenance.start(role="maintenance", wait=False)
    reader.start(role="api", wait=False)
    for proc in (coordinator, maintenance, reader):
        proc.wait_ready()
    with (
        httpx.Client(base_url=api.base_url, headers=HEADERS, timeout=60) as writes,
        httpx.Client(base_url=reader.base_url, headers=HEADERS, timeout=60) as reads,
    ):
        assert writes.post("/v1/tables", json=EVENTS).status_code == 201
        token = 0
        for batch in range(5):  # five commits: five small files to compact
            r = ingest(writes, batch * 40, 40)
            assert r.status_code == 200, r.text
            token = r.json()["max_visibility_token"]
            assert strict_query(writes, token).status_code == 200
        expected = [[200, 199 * 200 // 2, 0, 199]]
        assert strict_query(writes, token).json()["rows"] == expected
        assert strict_query(reads, token).json()["rows"] == expected

        def compacted_and_collected() -> bool:
            snaps = reads.get("/v1/snapshots").json()["snapshots"]
            head = reads.get(f"/v1/snapshots/{snaps[0]['snapshot_id']}").json()
            live = {f["path"] for t in head["tables"] for f in t["files"]}
            kinds = {s["kind"] for s in snaps}
            return "compaction" in kinds and bucket_keys(s3_server, s3_bucket) == live

        wait_for(compacted_and_collected, 60, "compaction and GC on the bucket")
        metrics = httpx.get(maintenance.base_url + "/v1/metrics").text
        assert metric(metrics, "duckmesh_gc_files_deleted_total") >= 1
        assert metric(metrics, "duckmesh_compaction_runs_total") >= 1
        # A new snapshot (after compaction) still answers the same, on both.
        for client in (writes, reads):
            r = client.post("/v1/query", json={"sql": SQL})
            assert r.json()["rows"] == expected
        report = writes.post("/v1/integrity/run")
        assert report.status_code == 200, report.text
        assert report.json()["summary"]["ok"] is True
    for proc in (reader, api, coordinator, maintenance):
        assert proc.terminate() == 0, proc.logs()[-2000:]
    for name in ("api-host", "coordinator-host", "maintenance-host", "query-host"):
        objects = tmp_path / name / "objects"
        assert not list(objects.rglob("*.parquet")) if objects.exists() else True, name
    assert list((tmp_path / "query-host" / "cache").rglob("*.parquet"))  # read via its cache


def test_object_store_outage_during_steady_ingest_loses_nothing(
    spawn_server: Callable[..., ServerProcess],
    s3_server: S3TestServer,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    api = spawn_server(**s3_env(s3_server, s3_bucket, tmp_path / "api-host"))
    api.start(role="api")
    coordinator = spawn_server(
        **s3_env(
            s3_server,
            s3_bucket,
            tmp_path / "coordinator-host",
            DUCKMESH_COMMIT_BACKOFF_MS="200",
            DUCKMESH_COMMIT_BACKOFF_MAX_MS="1000",
        )
    )
    coordinator.start(role="coordinator")
    acked: list[int] = []
    with httpx.Client(base_url=api.base_url, headers=HEADERS, timeout=60) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        r = ingest(client, 0, 1)
        assert strict_query(client, r.json()["max_visibility_token"]).status_code == 200
        acked.append(0)
        s3_server.relay.down()
        try:
            outage_ends = time.monotonic() + 10
            seen_degraded = False
            i = 1
            while time.monotonic() < outage_ends:
                r = ingest(client, i, 1)
                if r.status_code == 200:
                    acked.append(i)
                else:  # allowed: a clear, retryable error; the record is not acked
                    assert r.json()["retryable"] is True, r.text
                i += 1
                if not seen_degraded and len(acked) > 10:
                    seen_degraded = bool(_degraded(coordinator))
                time.sleep(0.1)
            assert seen_degraded or wait_for(lambda: _degraded(coordinator), 5, "degraded")
            lag = client.get("/v1/lag").json()
            assert lag["pending_records"] > 0
            lag_metrics = httpx.get(coordinator.base_url + "/v1/metrics").text
            assert metric(lag_metrics, "duckmesh_visibility_lag_seconds") > 0
        finally:
            s3_server.relay.up()
        assert len(acked) > 20  # acks continued throughout
        came_back = time.monotonic()
        r = strict_query(client, ingest(client, i, 1).json()["max_visibility_token"])
        resumed_s = time.monotonic() - came_back
        assert r.status_code == 200, r.text
        assert resumed_s < 15, resumed_s
        acked.append(i)
        ids = client.post(
            "/v1/query", json={"sql": "select id from events order by id", "row_limit": 10_000}
        ).json()["rows"]
        assert set(acked) <= {row[0] for row in ids}  # nothing acknowledged is lost
        ready = httpx.get(coordinator.base_url + "/v1/ready").json()
        assert ready["checks"]["object_store"] == "ok"
        assert wait_for(
            lambda: httpx.get(coordinator.base_url + "/v1/ready").json()["status"] == "ready",
            10,
            "ready again",
        )


def _degraded(proc: ServerProcess) -> dict[str, Any] | None:
    """The readiness body while the store is down: 200, degraded, the store
    unavailable and the tenant's commits failing on it; else None."""
    r = httpx.get(proc.base_url + "/v1/ready", timeout=5)
    body: dict[str, Any] = r.json()
    failing = {f["tenant_id"]: f["error"] for f in body["failing_tenants"]}
    if (
        r.status_code == 200
        and body["status"] == "degraded"
        and body["checks"]["object_store"] == "unavailable"
        and failing.get("default") == "ObjectStoreUnavailable"
    ):
        return body
    return None
