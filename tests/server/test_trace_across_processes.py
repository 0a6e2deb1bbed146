"""One write's trace id followed across the processes of ``duckmesh serve``
(issue 15): the API worker that accepted it logs it, the bus batch carries it,
the coordinator logs it on its commit and records it in the snapshot's
metadata. A JSON record request and an upload each keep their own trace."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ServerProcess

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
RECORDS_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPLOAD_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _traceparent(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}


def _events(srv: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in srv.logs().splitlines() if line.startswith("{")]


def _committed_with(srv: ServerProcess, *trace_ids: str) -> list[dict[str, Any]]:
    """The coordinator's "committed" lines naming every one of ``trace_ids``
    (awaited: the commit follows the acknowledgement)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [e for e in _events(srv) if e.get("event") == "committed"]
        named = {t for e in lines for t in e.get("trace_ids", ())}
        if set(trace_ids) <= named or time.monotonic() > deadline:
            return [e for e in lines if set(e.get("trace_ids", ())) & set(trace_ids)]
        time.sleep(0.1)


def test_one_trace_id_in_the_api_and_coordinator_logs_and_the_snapshot(
    spawn_server: Callable[..., ServerProcess], dsn: str
) -> None:
    # A process group (two API workers, a coordinator, maintenance) sharing
    # one log; the API's per-write line is at debug level.
    srv = spawn_server(DUCKMESH_API_WORKERS="2", DUCKMESH_LOG_LEVEL="debug")
    srv.start(wait=False)
    srv.wait_ready(timeout=90)
    with httpx.Client(base_url=srv.base_url, headers=HEADERS, timeout=30) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        body = {
            "records": [{"idempotency_key": "k1", "payload": {"id": 1}}],
            "wait_for_visibility": True,
            "visibility_timeout_ms": 30_000,
        }
        r = client.post("/v1/ingest/events", json=body, headers=_traceparent(RECORDS_TRACE))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "visible"
        r = client.post(
            "/v1/ingest/events",
            content=b"id,kind\n2,csv\n",
            headers={
                "Content-Type": "text/csv",
                "Idempotency-Key": "u1",
                **_traceparent(UPLOAD_TRACE),
            },
        )
        assert r.status_code == 200, r.text

    committed = _committed_with(srv, RECORDS_TRACE, UPLOAD_TRACE)
    assert {t for e in committed for t in e["trace_ids"]} >= {RECORDS_TRACE, UPLOAD_TRACE}
    assert {e["role"] for e in committed} == {"coordinator"}
    accepted = [
        e
        for e in _events(srv)
        if e.get("event") == "ingest accepted" and e.get("trace_id") == RECORDS_TRACE
    ]
    assert len(accepted) == 1, srv.logs()
    assert accepted[0]["role"] == "api"
    # Two processes wrote the one trace: the API worker and the coordinator.
    assert accepted[0]["pid"] not in {e["pid"] for e in committed}

    # The snapshot that made the records visible names their trace.
    snapshot_ids = {e["snapshot_id"] for e in committed if RECORDS_TRACE in e["trace_ids"]}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT metadata FROM event_log WHERE stream = 'snapshots:default'"
            " AND metadata ? 'trace_ids'"
        ).fetchall()
    recorded = [row[0]["trace_ids"] for row in rows]
    assert any(RECORDS_TRACE in ids for ids in recorded), recorded
    assert len(snapshot_ids) == 1
