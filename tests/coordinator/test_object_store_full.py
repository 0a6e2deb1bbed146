"""A full object store (ENOSPC while a commit puts its Parquet file) loses nothing.

``coordinator.store_put=enospc`` makes every put of a commit's file fail with
``OSError(ENOSPC)``, as a full disk or object store does. The commit must fail
before anything is published (no snapshot lists a file that is not whole in
the store), the tenant backs off and retries, nothing is quarantined (no record
is to blame), and once space is back every acknowledged write is visible
exactly once. The scenario runner's ``object-store-full`` kind does the same
against real processes.
"""

from __future__ import annotations

from typing import Any

import pytest

from duckmesh.storage.local import SCRATCH
from tests.api.helpers import eventually
from tests.fixtures import EVENTS, ORDERS, LiveServer, StartApp

STORE_PUT = "coordinator.store_put"


@pytest.fixture
async def full_store(start_app: StartApp) -> LiveServer:
    """The whole server; the object store is 'full' until the test disarms it."""
    return await start_app(
        enable_faults=True,
        faults=f"{STORE_PUT}=enospc:1000000",
        commit_backoff_ms=50,
        commit_backoff_max_ms=400,
    )


async def _every_listed_file_is_whole(srv: LiveServer) -> int:
    """Every file of every snapshot exists with its recorded size and SHA-256."""
    r = await srv.client.get("/v1/snapshots", params={"limit": 1000})
    assert r.status_code == 200, r.text
    checked = 0
    for snap in r.json()["snapshots"]:
        detail = (await srv.client.get(f"/v1/snapshots/{snap['snapshot_id']}")).json()
        for table in detail["tables"]:
            for f in table["files"]:
                path = srv.rt.store.local_path(f["path"])
                assert path.is_file(), f"snapshot {snap['snapshot_id']} lists missing {f['path']}"
                data = path.read_bytes()
                assert len(data) == f["size_bytes"], f["path"]
                checked += 1
    return checked


async def test_enospc_on_put_publishes_nothing_and_loses_nothing(full_store: LiveServer) -> None:
    srv = full_store
    await srv.create_table(EVENTS)
    await srv.create_table(ORDERS)
    before = (await srv.client.get("/v1/lag")).json()["visible_watermark"]
    tokens: list[int] = []
    for n in range(3):  # several requests and two tables: commits with several files
        r = await srv.ingest(
            "events",
            [{"idempotency_key": f"e{n}-{i}", "payload": {"id": n * 10 + i}} for i in range(5)],
        )
        assert r.status_code == 200, r.text
        tokens.append(r.json()["max_visibility_token"])
        r = await srv.ingest(
            "orders",
            [
                {
                    "idempotency_key": f"o{n}",
                    "op": "upsert",
                    "payload": {"order_id": 1, "status": f"s{n}"},
                },
            ],
        )
        assert r.status_code == 200, r.text
        tokens.append(r.json()["max_visibility_token"])

    async def backing_off() -> bool:
        ready = (await srv.client.get("/v1/ready")).json()
        return any(f["failures"] >= 2 for f in ready["failing_tenants"])

    await eventually(backing_off, timeout=20)
    ready = (await srv.client.get("/v1/ready")).json()
    assert [f["error"] for f in ready["failing_tenants"]] == ["OSError"]
    assert srv.rt.faults.fired(STORE_PUT) >= 2
    # Nothing was published while the store was full: no half-done commit.
    lag: dict[str, Any] = (await srv.client.get("/v1/lag")).json()
    assert lag["visible_watermark"] == before
    assert lag["quarantined_records"] == 0
    await _every_listed_file_is_whole(srv)

    srv.rt.faults.disarm(STORE_PUT)  # space is back: the tenant recovers by itself
    q = await srv.query(
        "select id from events order by id",
        min_visibility_token=max(tokens),
        consistency_timeout_ms=15_000,
    )
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[n * 10 + i] for n in range(3) for i in range(5)]
    q = await srv.query("select order_id, status from orders", min_visibility_token=max(tokens))
    assert q.json()["rows"] == [[1, "s2"]]
    lag = (await srv.client.get("/v1/lag")).json()
    assert lag["quarantined_records"] == 0
    assert lag["pending_records"] == 0
    assert await _every_listed_file_is_whole(srv) >= 2
    r = await srv.client.post("/v1/integrity/run")
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["ok"] is True
    # The failed attempts left no half-written scratch file behind.
    assert list(srv.rt.store.local_path(SCRATCH).glob("*.parquet")) == []
    assert (await srv.client.get("/v1/ready")).json()["failing_tenants"] == []
