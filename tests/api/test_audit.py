"""GET /v1/audit (issue 14): a tenant's ops_admin reads its own administrative
events with the acting key and the request's trace id, never another
tenant's, never a key hash; other roles are refused; pages chain."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest

from duckmesh.api.openapi import load_openapi
from duckmesh.auth import hash_key, key_id_for
from duckmesh.catalog.audit import NOT_AUDITED, SUMMARIES
from duckmesh.catalog.model import ROLES
from duckmesh.events import EVENT_TYPES
from tests.api.helpers import assert_error, bearer, create_tenant, issue_key
from tests.api.test_openapi import check_response
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, LiveServer

BOOTSTRAP_KEY_ID = key_id_for(hash_key(BOOTSTRAP_KEY))


def traced() -> tuple[str, dict[str, str]]:
    trace = secrets.token_hex(16)
    return trace, {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}


async def _audit(client: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/audit", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    check_response(load_openapi(), "/v1/audit", "get", r)
    body: dict[str, Any] = r.json()
    return body


def _only(entries: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    found = [e for e in entries if e["event_type"] == event_type]
    assert len(found) == 1, (event_type, entries)
    return found[0]


async def test_ops_admin_sees_its_tenants_changes_with_key_and_trace(server: LiveServer) -> None:
    c = server.client
    create_trace, headers = traced()
    assert (await c.post("/v1/tables", json=EVENTS, headers=headers)).status_code == 201
    r = await server.ingest(
        "events", [{"idempotency_key": "a", "payload": {"id": 1}}], wait_for_visibility=True
    )
    snapshot_id = r.json()["visible_snapshot_id"]
    pin_trace, headers = traced()
    r = await c.post("/v1/snapshots/pin", json={"snapshot_id": snapshot_id}, headers=headers)
    assert r.status_code == 200, r.text
    run_trace, headers = traced()
    assert (await c.post("/v1/integrity/run", headers=headers)).status_code == 200
    ops_id, ops_key = await issue_key(server.rt, "default", ["ops_admin"])
    # Tenant B does the same kinds of things.
    await create_tenant(server.rt, "tenant-b")
    b_id, b_key = await issue_key(server.rt, "tenant-b", list(ROLES))
    b_table = dict(EVENTS, name="b_secret_table")
    assert (await c.post("/v1/tables", json=b_table, headers=bearer(b_key))).status_code == 201

    page = await _audit(c, ops_key)
    entries = page["entries"]
    assert page["next_after"] is None
    assert all(e["stream"].endswith(":default") for e in entries), entries
    assert "SnapshotPublished" not in {e["event_type"] for e in entries}
    positions = [e["position"] for e in entries]
    assert positions == sorted(positions)
    created = _only(entries, "TableCreated")
    assert created["actor_key_id"] == BOOTSTRAP_KEY_ID
    assert created["trace_id"] == create_trace
    assert created["summary"]["name"] == "events"
    pinned = _only(entries, "SnapshotPinned")
    assert (pinned["actor_key_id"], pinned["trace_id"]) == (BOOTSTRAP_KEY_ID, pin_trace)
    assert pinned["summary"] == {"snapshot_id": snapshot_id, "reason": ""}
    run = _only(entries, "MaintenanceCompleted")
    assert (run["actor"], run["actor_key_id"], run["trace_id"]) == (
        "integrity",
        BOOTSTRAP_KEY_ID,
        run_trace,
    )
    assert run["summary"]["kind"] == "integrity"
    issued = [e for e in entries if e["event_type"] == "ApiKeyIssued"]
    assert {e["summary"]["key_id"] for e in issued} == {BOOTSTRAP_KEY_ID, ops_id}
    assert all(set(e["summary"]) == {"key_id", "roles"} for e in issued)
    assert _only(entries, "TenantCreated")["summary"] == {"tenant_id": "default", "name": "default"}

    text = (await c.get("/v1/audit", headers=bearer(ops_key))).text
    hashes = await server.rt.db.run(
        lambda conn: conn.execute("SELECT key_hash FROM api_key").fetchall()
    )
    assert hashes
    assert not any(h in text for (h,) in hashes)  # no tenant's key hash, ever
    assert "b_secret_table" not in text
    assert b_id not in text

    b_entries = (await _audit(c, b_key))["entries"]
    assert {e["event_type"] for e in b_entries} == {"TenantCreated", "ApiKeyIssued", "TableCreated"}
    assert all(e["stream"].endswith(":tenant-b") for e in b_entries)
    assert _only(b_entries, "TableCreated")["actor_key_id"] == b_id


async def test_only_ops_admin_reads_the_audit_trail(server: LiveServer) -> None:
    for role in ROLES:
        _, key = await issue_key(server.rt, "default", [role])
        r = await server.client.get("/v1/audit", headers=bearer(key))
        if role == "ops_admin":
            assert r.status_code == 200, r.text
        else:
            body = assert_error(r, 403, "FORBIDDEN")
            assert body["context"]["required_roles"] == ["ops_admin"]
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert_error(await anonymous.get("/v1/audit"), 401, "UNAUTHENTICATED")


async def test_pages_chain_without_gaps_or_repeats(server: LiveServer) -> None:
    for n in range(3):
        table = dict(EVENTS, name=f"t{n}")
        assert (await server.client.post("/v1/tables", json=table)).status_code == 201
        assert (await server.client.delete(f"/v1/tables/t{n}")).status_code == 200
    everything = (await _audit(server.client, server.key, limit=1000))["entries"]
    assert len(everything) >= 8  # tenant, key, 3 x (create, drop)
    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await _audit(server.client, server.key, limit=3, after=after)
        seen.extend(page["entries"])
        assert len(page["entries"]) <= 3
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == everything
    tail = await _audit(server.client, server.key, after=everything[-1]["position"])
    assert tail == {"entries": [], "next_after": None}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "x"},
        {"after": -1},
        {"after": 2**63},
        {"after": "1e3"},
    ],
)
async def test_bad_paging_is_400(server: LiveServer, params: dict[str, Any]) -> None:
    r = await server.client.get("/v1/audit", params=params)
    assert_error(r, 400, "VALIDATION_FAILED")
    check_response(load_openapi(), "/v1/audit", "get", r)


def test_every_event_type_is_audited_or_left_out_on_purpose() -> None:
    assert set(SUMMARIES) | set(NOT_AUDITED) == set(EVENT_TYPES)
    assert not set(SUMMARIES) & set(NOT_AUDITED)
    assert "key_hash" not in str(
        SUMMARIES["ApiKeyIssued"]({"key_id": "k", "roles": [], "key_hash": "h"})
    )
