"""A 1,000-record request over HTTP, checked column by column: the contract
of the record-by-record check holds (error context, nothing written, retries
recognised as duplicates, a changed payload as a conflict)."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import assert_error
from tests.fixtures import EVENTS, LiveServer


def records(n: int) -> list[dict[str, Any]]:
    return [
        {"idempotency_key": f"k{i}", "payload": {"id": i, "kind": "é🦆", "value": i / 3}}
        for i in range(n)
    ]


async def test_a_large_request_keeps_the_record_by_record_contract(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    bad = records(1000)
    bad[637]["payload"]["value"] = "1.5"
    refused = assert_error(await server.ingest("events", bad), 400, "VALIDATION_FAILED")
    assert refused["context"]["errors"] == [
        {"index": 637, "field": "payload.value", "reason": "expected DOUBLE (a number)"}
    ]
    assert (await server.client.get("/v1/lag")).json()["latest_token"] == 0  # nothing written

    first = await server.ingest("events", records(1000))
    assert first.status_code == 200, first.text
    assert first.json()["accepted_count"] == 1000
    again = await server.ingest("events", records(1000))
    assert again.status_code == 200, again.text
    assert (again.json()["duplicate_count"], again.json()["max_visibility_token"]) == (1000, 1000)

    changed = records(1000)
    changed[999]["payload"]["kind"] = "other"
    conflict = assert_error(await server.ingest("events", changed), 409, "IDEMPOTENCY_CONFLICT")
    assert conflict["context"]["record_index"] == 999
    assert (await server.client.get("/v1/lag")).json()["latest_token"] == 1000
