"""Poison records never block: one tenant's failing commits stop nobody else.

With the ``coordinator.poison_record`` fault point armed, records whose payload
carries ``POISON_MARKER`` fail to build at commit time, as a record no
validation foresaw would. The committer bisects the failed batch, quarantines
exactly those records and commits the rest in the same publish. A failure that
no record explains (here: the tenant's object directory is blocked by a file)
backs that tenant off and shows it in ``/v1/ready`` while the other tenant
keeps committing; the coordinator actor is never restarted or given up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import httpx
import pytest
import trio

from duckmesh.bus import IngestRecord
from duckmesh.catalog import commands
from duckmesh.runtime import Runtime, coordinator_actors
from duckmesh.supervisors.faults import POISON_MARKER
from tests.api.helpers import bearer, create_tenant, eventually, issue_key
from tests.fixtures import EVENTS, LiveServer, StartApp

ROUNDS = 6


@pytest.fixture
async def faulty(start_app: StartApp) -> LiveServer:
    """The whole server, with the poison fault point armed for good."""
    return await start_app(
        enable_faults=True,
        faults="coordinator.poison_record=raise:1000000",
        commit_backoff_ms=50,
        commit_backoff_max_ms=400,
    )


async def _other_tenant(srv: LiveServer) -> httpx.AsyncClient:
    await create_tenant(srv.rt, "tenant-b")
    _, key = await issue_key(srv.rt, "tenant-b", ["ingest_writer", "query_reader", "table_admin"])
    client = httpx.AsyncClient(base_url=srv.base_url, headers=bearer(key), timeout=30)
    r = await client.post("/v1/tables", json=EVENTS)
    assert r.status_code == 201, r.text
    return client


async def _write_and_read(client: httpx.AsyncClient, n: int) -> None:
    """One write of tenant B becomes visible within the normal consistency timeout."""
    r = await client.post(
        "/v1/ingest/events", json={"records": [{"idempotency_key": f"b{n}", "payload": {"id": n}}]}
    )
    assert r.status_code == 200, r.text
    token = r.json()["max_visibility_token"]
    q = await client.post(
        "/v1/query", json={"sql": "select count(*) from events", "min_visibility_token": token}
    )
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[n + 1]]


def _coordinator(ready: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(a for a in ready["actors"] if a["name"] == "coordinator-0")
    return found


async def test_poison_records_are_quarantined_and_nobody_waits(faulty: LiveServer) -> None:
    srv = faulty
    await srv.create_table(EVENTS)
    b = await _other_tenant(srv)
    good: list[int] = []
    tokens = []
    for n in range(ROUNDS):
        ids = [n * 10 + i for i in range(4)]
        kinds = ["ok", POISON_MARKER, "ok", POISON_MARKER if n % 2 else "ok"]
        records = [
            {"idempotency_key": f"a{i}", "payload": {"id": i, "kind": kind}}
            for i, kind in zip(ids, kinds, strict=True)
        ]
        r = await srv.ingest("events", records)
        assert r.status_code == 200, r.text  # nothing in them is invalid
        tokens.append(r.json()["max_visibility_token"])
        good += [i for i, kind in zip(ids, kinds, strict=True) if kind == "ok"]
        await _write_and_read(b, n)
    q = await srv.query("select id from events order by id", min_visibility_token=tokens[-1])
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[i] for i in good]
    lag = (await srv.client.get("/v1/lag")).json()
    poisoned = ROUNDS * 4 - len(good)
    assert lag["quarantined_records"] == poisoned
    assert lag["pending_records"] == 0
    assert {q["reason"] for q in lag["recent_quarantine"]} == {"commit failed: FaultInjected"}
    assert srv.rt.faults.fired("coordinator.poison_record") >= poisoned
    ready = (await srv.client.get("/v1/ready")).json()
    assert ready["status"] == "ready"  # bisecting fixed every batch: nobody is failing
    assert ready["failing_tenants"] == []
    assert _coordinator(ready)["state"] == "running"
    assert _coordinator(ready)["restarts"] == 0
    await b.aclose()


async def test_a_failing_tenant_backs_off_and_is_reported_while_others_commit(
    faulty: LiveServer,
) -> None:
    srv = faulty
    await srv.create_table(EVENTS)
    b = await _other_tenant(srv)
    # A file where tenant default's object directory goes: every write of its
    # Parquet files fails, for a reason that no record explains.
    blocker = srv.rt.store.local_path("default")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    r = await srv.ingest(
        "events", [{"idempotency_key": "a1", "payload": {"id": 1, "kind": "secret-value"}}]
    )
    assert r.status_code == 200, r.text
    token = r.json()["max_visibility_token"]

    async def reported() -> bool:
        ready = (await srv.client.get("/v1/ready")).json()
        return any(f["failures"] >= 3 for f in ready["failing_tenants"])

    await eventually(reported, timeout=20)
    for n in range(3):
        await _write_and_read(b, n)  # the other tenant is not held up
    r = await srv.client.get("/v1/ready")
    assert r.status_code == 200  # degraded, not unready: it serves everyone else
    ready = r.json()
    assert ready["status"] == "degraded"
    [failing] = ready["failing_tenants"]
    assert failing["tenant_id"] == "default"
    assert failing["error"] in ("NotADirectoryError", "FileExistsError")
    assert failing["failing_since"]
    assert "secret-value" not in r.text  # error classes only, never payload values
    assert _coordinator(ready)["state"] == "running"
    assert _coordinator(ready)["restarts"] == 0
    metrics = (await srv.client.get("/v1/metrics")).text
    assert 'duckmesh_tenant_commit_failures_total{tenant="default"}' in metrics
    assert "duckmesh_failing_tenants 1.0" in metrics
    # Nothing was quarantined: the record is fine, the disk is not.
    assert (await srv.client.get("/v1/lag")).json()["quarantined_records"] == 0

    blocker.unlink()  # the operator fixes the disk: the tenant recovers by itself
    q = await srv.query(
        "select id from events", min_visibility_token=token, consistency_timeout_ms=10_000
    )
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[1]]
    ready = (await srv.client.get("/v1/ready")).json()
    assert ready["status"] == "ready"
    assert ready["failing_tenants"] == []
    await b.aclose()


def _record(table_id: str, key: str, payload: dict[str, object], when: str | None) -> Any:
    text = json.dumps(payload)
    digest = hashlib.sha256(text.encode()).digest()
    event_time = dt.datetime.fromisoformat(when) if when else None  # not validated
    return IngestRecord(table_id, key, "insert", text, digest, event_time, 1)


async def test_an_event_time_python_cannot_load_is_quarantined_not_a_crash(
    runtime: Runtime,
) -> None:
    """Defence in depth for records written before validation checked the range
    (or by another writer): the claim loads them without crashing."""
    rt = runtime
    body = {"name": "t", "columns": [{"name": "id", "type": "BIGINT"}]}
    table = rt.db.call(lambda c: commands.create_table(c, "default", body))
    rt.bus.publish(
        "default",
        [
            [
                _record(table.table_id, "a", {"id": 1}, None),
                _record(table.table_id, "b", {"id": 2}, "0001-01-01T00:00:00+05:00"),
                _record(table.table_id, "c", {"id": 3}, "9999-12-31T23:59:59-05:00"),
                _record(table.table_id, "d", {"id": 4}, "2024-01-01T00:00:00Z"),
            ]
        ],
    )
    committer = coordinator_actors(rt)[0].committer
    outcome = await trio.to_thread.run_sync(committer.commit_once)
    assert outcome is not None
    assert outcome.snapshot_id is not None
    assert outcome.watermark == 4
    assert outcome.quarantined == 2
    count, recent = rt.bus.quarantined("default")
    assert count == 2
    assert {(q["token"], q["reason"]) for q in recent} == {
        (2, "event_time outside 0001-01-01..9999-12-31 UTC"),
        (3, "event_time outside 0001-01-01..9999-12-31 UTC"),
    }
