"""One idempotency key hammered concurrently over HTTP (SPEC §2.3, §3 edge cases).

Requests are spread over two API nodes of one catalog, so the retries meet
both inside one group-commit transaction and across parallel transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import trio
import trio.testing

from duckmesh.config import Config
from tests.bus.nodes import second_api_node
from tests.bus.stored import stored_records
from tests.fixtures import EVENTS, LiveServer

TENANT = "default"
STORM = 50
KEY = "storm-key"
BODY = {"idempotency_key": KEY, "payload": {"id": 7, "kind": "storm", "value": 1.5}}
CONFLICTING = [
    {"idempotency_key": KEY, "payload": {"id": 7, "kind": "storm", "value": 2.5}},
    {"idempotency_key": KEY, "payload": {"id": 7, "kind": "other", "value": 1.5}},
    {"idempotency_key": KEY, "payload": {"id": 7, "kind": "storm"}},
    {**BODY, "event_time": "2024-01-01T00:00:00Z"},
]


def _stored(dsn: str) -> list[tuple[Any, ...]]:
    """The records stored under KEY: (token, payload, hash, op, event time)."""
    return [tuple(r) for key, r in stored_records(dsn, TENANT).items() if key == KEY]


async def _all_at_once(
    nodes: tuple[LiveServer, ...], bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    responses: list[httpx.Response | None] = [None] * len(bodies)
    go = trio.Event()

    async def send(i: int) -> None:
        await go.wait()
        responses[i] = await nodes[i % len(nodes)].ingest("events", [bodies[i]])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(len(bodies)):
                nursery.start_soon(send, i)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


async def test_idempotency_storm_one_key_fifty_concurrent_requests(
    server: LiveServer, make_config: Callable[..., Config], dsn: str
) -> None:
    await server.create_table(EVENTS)
    async with second_api_node(make_config, dsn) as other:
        nodes = (server, other)

        responses = await _all_at_once(nodes, [BODY] * STORM)
        assert [r.status_code for r in responses] == [200] * STORM, [
            r.text for r in responses if r.status_code != 200
        ]
        bodies = [r.json() for r in responses]
        tokens = {b["max_visibility_token"] for b in bodies}
        assert len(tokens) == 1, f"retries got different tokens: {sorted(tokens)}"
        assert sum(b["accepted_count"] for b in bodies) == 1
        assert sum(b["duplicate_count"] for b in bodies) == STORM - 1
        assert sorted(b["status"] for b in bodies) == ["accepted"] + ["partial_duplicate"] * (
            STORM - 1
        )
        stored = _stored(dsn)
        assert len(stored) == 1, "an idempotency key yielded two logical writes"
        (token,) = tokens
        assert stored[0][0] == token
        assert server.rt.bus.latest_token(TENANT) == token

        # The same key with other payloads, concurrently: every one is a 409, none writes.
        conflicting = [CONFLICTING[i % len(CONFLICTING)] for i in range(20)]
        refused = await _all_at_once(nodes, conflicting)
        assert [r.status_code for r in refused] == [409] * len(refused), [
            r.text for r in refused if r.status_code != 409
        ]
        assert {r.json()["error_code"] for r in refused} == {"IDEMPOTENCY_CONFLICT"}
        assert _stored(dsn) == stored, "a conflicting request changed the stored record"
        assert server.rt.bus.latest_token(TENANT) == token

        # The original body is still recognised as a retry afterwards.
        again = await other.ingest("events", [BODY])
        assert again.status_code == 200, again.text
        assert again.json()["max_visibility_token"] == token
        assert again.json()["duplicate_count"] == 1
