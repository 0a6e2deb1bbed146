"""The consistency errors of SPEC §3 carry the structured context a client retries with.

CONSISTENCY_TIMEOUT (with ``current_watermark``) is covered with a stopped
coordinator in ``tests/query/test_consistency.py``; these are the others.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures import EVENTS, LiveServer


async def _visible_write(server: LiveServer, key: str) -> dict[str, Any]:
    r = await server.ingest(
        "events", [{"idempotency_key": key, "payload": {"id": 1}}], wait_for_visibility=True
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_token_scope_mismatch_names_the_snapshot_and_its_watermark(
    server: LiveServer,
) -> None:
    await server.create_table(EVENTS)
    first = await _visible_write(server, "a")
    await _visible_write(server, "b")
    old = first["visible_snapshot_id"]
    r = await server.query("select count(*) from events", snapshot_id=old, min_visibility_token=2)
    assert r.status_code == 400
    body = r.json()
    assert body["error_code"] == "TOKEN_SCOPE_MISMATCH"
    assert body["retryable"] is False
    assert body["context"] == {"snapshot_id": old, "watermark": 1}
    # A snapshot chosen by time cannot honour a token either.
    r = await server.query("select 1", snapshot_time="2030-01-01T00:00:00Z", min_visibility_token=1)
    assert r.status_code == 400
    assert r.json()["error_code"] == "TOKEN_SCOPE_MISMATCH"
    # A token at or below the snapshot's watermark is fine.
    ok = await server.query("select count(*) from events", snapshot_id=old, min_visibility_token=1)
    assert ok.json()["rows"] == [[1]]


async def test_snapshot_not_found_names_what_was_asked(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    r = await server.query("select 1", snapshot_id=999)
    assert r.status_code == 404
    assert r.json()["error_code"] == "SNAPSHOT_NOT_FOUND"
    assert r.json()["context"] == {"snapshot_id": 999}
    r = await server.query("select 1", snapshot_time="2000-01-01T00:00:00Z")
    assert r.status_code == 404
    assert r.json()["error_code"] == "SNAPSHOT_NOT_FOUND"
    assert "snapshot_time" in r.json()["context"]


async def test_a_token_never_issued_is_invalid_at_once(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    await _visible_write(server, "a")
    r = await server.query("select 1", min_visibility_token=50, consistency_timeout_ms=30_000)
    assert r.status_code == 400
    body = r.json()
    assert body["error_code"] == "VISIBILITY_TOKEN_INVALID"
    assert body["context"] == {"token": 50, "latest_issued_token": 1}
