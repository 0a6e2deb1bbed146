"""Per-tenant storage quota (DUCKMESH_TENANT_STORAGE_QUOTA_BYTES): a tenant
whose published data files hold the quota or more is refused with 429
QUOTA_EXCEEDED and a Retry-After; nothing of the refused request is written,
and other tenants keep writing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import assert_error, bearer, create_tenant, eventually, issue_key
from tests.fixtures import EVENTS, LiveServer, StartApp

QUOTA = 1  # any published data file fills it


@pytest.fixture
async def quota_server(start_app: StartApp) -> LiveServer:
    return await start_app(tenant_storage_quota_bytes=QUOTA)


def _record(n: int) -> list[dict[str, Any]]:
    return [{"idempotency_key": f"k{n}", "payload": {"id": n}}]


async def test_storage_quota_refuses_a_full_tenant_only(quota_server: LiveServer) -> None:
    srv = quota_server
    await srv.create_table(EVENTS)
    # Nothing is stored yet: the first write passes and becomes a data file.
    first = await srv.ingest("events", _record(0), wait_for_visibility=True)
    assert first.status_code == 200, first.text
    snapshot_id = first.json()["visible_snapshot_id"]
    snap = (await srv.client.get(f"/v1/snapshots/{snapshot_id}")).json()
    stored = sum(f["size_bytes"] for t in snap["tables"] for f in t["files"])
    assert stored > QUOTA

    refused: list[Any] = []
    sent = iter(range(1, 10_000))

    async def over_quota() -> bool:
        # The stored bytes are cached: the refusal comes within the refresh interval.
        r = await srv.ingest("events", _record(next(sent)))
        if r.status_code == 200:
            return False
        refused.append(r)
        return True

    await eventually(over_quota, timeout=20, interval=0.2)
    body = assert_error(refused[0], 429, "QUOTA_EXCEEDED")
    assert refused[0].headers["Retry-After"] == str(body["context"]["retry_after_s"])
    assert body["context"]["quota"] == "storage_bytes"
    assert body["context"]["limit_bytes"] == QUOTA
    assert body["context"]["used_bytes"] >= stored
    # A refused request writes nothing.
    before = (await srv.client.get("/v1/lag")).json()["latest_token"]
    assert_error(await srv.ingest("events", _record(99_999)), 429, "QUOTA_EXCEEDED")
    assert (await srv.client.get("/v1/lag")).json()["latest_token"] == before

    # Another tenant stores nothing yet and is not limited by this one.
    await create_tenant(srv.rt, "other")
    _, key = await issue_key(srv.rt, "other", ["table_admin", "ingest_writer"])
    r = await srv.client.post("/v1/tables", json=EVENTS, headers=bearer(key))
    assert r.status_code == 201, r.text
    r = await srv.client.post(
        "/v1/ingest/events", json={"records": _record(0)}, headers=bearer(key)
    )
    assert r.status_code == 200, r.text


async def test_no_quota_by_default(server: LiveServer) -> None:
    assert server.rt.config.tenant_storage_quota_bytes == 0
    await server.create_table(EVENTS)
    for n in range(3):
        r = await server.ingest("events", _record(n), wait_for_visibility=True)
        assert r.status_code == 200, r.text
