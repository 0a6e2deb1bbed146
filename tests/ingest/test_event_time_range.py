"""An ``event_time`` outside what the catalog, Python and the partitions hold is
refused at ingest (it used to be accepted and wedge every tenant's commits).

``0001-01-01T00:00:00+05:00`` is valid ISO 8601 but before year 1 in UTC;
``9999-12-31T23:59:59-05:00`` is after 9999 in UTC. Postgres stores both, but
they failed to load at claim time, crashing the coordinator in a loop. The
instants at the very edges of the range are accepted and become visible.
"""

from __future__ import annotations

import pytest

from tests.api.helpers import assert_error
from tests.fixtures import EVENTS, LiveServer

OUTSIDE = ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+00:01"]
EDGES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-05:00",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59+05:00",
    "9999-12-31T23:59:59.999999",
]


@pytest.mark.parametrize("event_time", OUTSIDE)
async def test_event_time_outside_the_range_is_400_and_commits_go_on(
    server: LiveServer, event_time: str
) -> None:
    await server.create_table(EVENTS)
    r = await server.ingest(
        "events",
        [
            {"idempotency_key": "ok", "payload": {"id": 1}},
            {"idempotency_key": "poison", "payload": {"id": 2}, "event_time": event_time},
        ],
    )
    body = assert_error(r, 400, "VALIDATION_FAILED")
    assert body["context"]["errors"] == [
        {
            "index": 1,
            "field": "event_time",
            "reason": "must be from 0001-01-01 to 9999-12-31 in UTC",
        }
    ]
    # Nothing of the request was written, and the next write becomes visible.
    r = await server.ingest("events", [{"idempotency_key": "next", "payload": {"id": 3}}])
    assert r.status_code == 200, r.text
    token = r.json()["max_visibility_token"]
    assert token == 1
    q = await server.query("select id from events", min_visibility_token=token)
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[3]]


async def test_event_times_at_the_edges_commit(server: LiveServer) -> None:
    await server.create_table(EVENTS)
    records = [
        {"idempotency_key": f"e{n}", "payload": {"id": n}, "event_time": when}
        for n, when in enumerate(EDGES)
    ]
    r = await server.ingest("events", records)
    assert r.status_code == 200, r.text
    token = r.json()["max_visibility_token"]
    q = await server.query("select id from events order by id", min_visibility_token=token)
    assert q.status_code == 200, q.text
    assert q.json()["rows"] == [[n] for n in range(len(EDGES))]
    lag = (await server.client.get("/v1/lag")).json()
    assert lag["quarantined_records"] == 0
