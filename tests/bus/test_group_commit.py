"""Group commit (SPEC §2.3): a tenant's concurrent requests share transactions.

The bus behind the group committer is wrapped in a counting proxy whose first
``publish`` waits at a gate until every request of the burst has been handed
to the committer, so the burst needs at most two transactions whatever the
scheduling. Each request stays all-or-nothing inside the shared transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import trio

from duckmesh import metrics
from duckmesh.bus.protocol import IngestBus, IngestRecord, Receipts
from duckmesh.errors import DuckMeshError
from tests.bus.stored import stored_records
from tests.fixtures import EVENTS, LiveServer

TENANT = "default"
GROUP_METRIC = "duckmesh_ingest_group_commit_requests"


class GatedCountingBus:
    """Delegates to a real bus; counts publish calls; holds the first until ``gate`` opens."""

    def __init__(self, inner: IngestBus) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.calls: list[int] = []  # requests per publish call (= per transaction)
        self._lock = threading.Lock()

    def publish(
        self,
        tenant_id: str,
        requests: Sequence[Sequence[IngestRecord]],
        trace_ids: Sequence[str | None] | None = None,
    ) -> list[Receipts | DuckMeshError]:
        with self._lock:
            first = not self.calls
            self.calls.append(len(requests))
        if first and not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return self.inner.publish(tenant_id, requests, trace_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _record(key: str, n: int, value: float = 1.0) -> dict[str, Any]:
    return {"idempotency_key": key, "payload": {"id": n, "kind": "group", "value": value}}


def _metric(suffix: str) -> float:
    value = metrics.REGISTRY.get_sample_value(GROUP_METRIC + suffix)
    return value or 0.0


async def test_group_commit_serves_many_requests_with_few_transactions(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.create_table(EVENTS)
    seeded = await server.ingest("events", [_record("taken", 0, value=1.0)])
    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["max_visibility_token"] == 1

    # The burst: valid requests of 1-3 new records, two identical twins, and
    # requests that each carry a fresh record plus a conflicting reuse of "taken".
    valid = [[_record(f"v{i}-{j}", 100 * i + j) for j in range(1 + i % 3)] for i in range(30)]
    twins = [[_record("twin", 9000)], [_record("twin", 9000)]]
    conflicting = [
        [_record(f"c{i}-fresh", 5000 + i), _record("taken", 0, value=2.0)] for i in range(10)
    ]
    requests = valid + twins + conflicting
    n_requests = len(requests)

    ingest = server.rt.ingest
    proxy = GatedCountingBus(ingest.bus)
    monkeypatch.setattr(ingest, "bus", proxy)
    submitted = 0
    all_submitted = trio.Event()
    real_submit = ingest.submit

    async def counting_submit(tenant: str, records: Sequence[IngestRecord]) -> Receipts:
        nonlocal submitted
        submitted += 1
        if submitted == n_requests:
            all_submitted.set()
        # Queues the request before its first checkpoint.
        return await real_submit(tenant, records)

    monkeypatch.setattr(ingest, "submit", counting_submit)
    count_before, sum_before = _metric("_count"), _metric("_sum")

    responses: list[httpx.Response | None] = [None] * n_requests

    async def send(i: int) -> None:
        responses[i] = await server.ingest("events", requests[i])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(n_requests):
                nursery.start_soon(send, i)
            await all_submitted.wait()
            proxy.gate.set()

    # Fewer transactions than requests, and the metric agrees with the proxy.
    assert len(proxy.calls) <= 2 < n_requests, proxy.calls
    assert sum(proxy.calls) == n_requests
    assert _metric("_count") - count_before == len(proxy.calls)
    assert _metric("_sum") - sum_before == n_requests

    # Each request all-or-nothing: the valid ones got their contiguous runs,
    # the conflicting ones failed whole.
    got = [r for r in responses if r is not None]
    assert len(got) == n_requests
    expected: dict[str, int] = {"taken": 1}
    for req, r in zip(valid, got[: len(valid)], strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted_count"] == len(req)
        assert body["duplicate_count"] == 0
        top = body["max_visibility_token"]
        for offset, record in enumerate(req):
            expected[record["idempotency_key"]] = top - len(req) + 1 + offset
    twin_bodies = [r.json() for r in got[len(valid) : len(valid) + 2]]
    assert [r.status_code for r in got[len(valid) : len(valid) + 2]] == [200, 200]
    assert sorted(b["duplicate_count"] for b in twin_bodies) == [0, 1]
    assert twin_bodies[0]["max_visibility_token"] == twin_bodies[1]["max_visibility_token"]
    expected["twin"] = twin_bodies[0]["max_visibility_token"]
    for r in got[len(valid) + 2 :]:
        assert r.status_code == 409, r.text
        assert r.json()["error_code"] == "IDEMPOTENCY_CONFLICT"

    total = len(expected)
    assert sorted(expected.values()) == list(range(1, total + 1))
    records = stored_records(server.rt.dsn, TENANT)
    stored = {key: r.token for key, r in records.items()}
    assert stored == expected  # no "c*-fresh" record: conflicting requests wrote nothing
    assert records["taken"].payload["value"] == 1.0
    assert server.rt.bus.latest_token(TENANT) == total
