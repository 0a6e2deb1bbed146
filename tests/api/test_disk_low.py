"""Issue 15: low free disk is backpressure. Below DUCKMESH_MIN_FREE_DISK_BYTES
ingest answers 507 DISK_LOW (retryable, nothing written), queries keep
working and /v1/ready reports the free space as degraded. The threshold is
set above any real disk's free space, so nothing has to be filled."""

from __future__ import annotations

from duckmesh.api.app import load_openapi
from tests.api.test_openapi import check_response
from tests.fixtures import EVENTS, StartApp

RECORD = {"idempotency_key": "a", "payload": {"id": 1}}


async def test_ingest_answers_507_below_the_free_disk_minimum(start_app: StartApp) -> None:
    doc = load_openapi()
    srv = await start_app(min_free_disk_bytes=1 << 50)  # 1 PiB: more than any test disk has
    await srv.create_table(EVENTS)
    r = await srv.ingest("events", [RECORD])
    assert r.status_code == 507, r.text
    body = r.json()
    assert body["error_code"] == "DISK_LOW"
    assert body["retryable"] is True
    assert body["context"]["min_free_bytes"] == 1 << 50
    assert 0 < body["context"]["free_bytes"] < 1 << 50
    assert r.headers["retry-after"] == "5"
    check_response(doc, "/v1/ingest/{table}", "post", r)

    ready = await srv.client.get("/v1/ready")
    assert ready.status_code == 200, ready.text  # queries still work: degraded, not unready
    assert ready.json()["status"] == "degraded"
    assert ready.json()["disk"]["low"] is True
    check_response(doc, "/v1/ready", "get", ready)
    q = await srv.query("SELECT count(*) FROM events")
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[0]]  # the refused record was not written

    srv.rt.disk.min_free_bytes = 0  # space freed: ingest is accepted again
    r = await srv.ingest("events", [RECORD], wait_for_visibility=True)
    assert r.status_code == 200, r.text
    ready = await srv.client.get("/v1/ready")
    assert ready.json()["status"] == "ready"
    assert ready.json()["disk"]["low"] is False
