"""Crash safety with real processes (issue: commit coordinator acceptance).

An API process takes a steady stream of writes while the coordinator runs
as a separate process that is SIGKILLed at random moments and made to kill
itself at each named fault point, then restarted. Afterwards every
acknowledged record must be visible exactly once (keyed table: the latest op
per key wins), watermarks never went back, and replay verify passes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from duckmesh.supervisors.faults import COMMIT_FAULT_POINTS
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, ORDERS, REPO, ServerProcess

# The commit-path points before the snapshot is durable.
FAULT_POINTS = COMMIT_FAULT_POINTS[:-1]
RANDOM_KILLS = 10


class Writer(threading.Thread):
    """Sends writes until stopped; remembers every acknowledged one."""

    def __init__(self, base_url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
        )
        self.rng = random.Random(seed)
        self.seed = seed
        self.stop = threading.Event()
        self.acked_events: list[int] = []
        self.acked_orders: list[tuple[int, str, int, str | None]] = []  # token, op, key, status
        self.max_token = 0
        self.errors: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 2:
                ids = [self.seed * 10_000_000 + n * 10 + i for i in range(10)]
                body = {
                    "records": [{"idempotency_key": f"e{i}", "payload": {"id": i}} for i in ids]
                }
                r = self.client.post("/v1/ingest/events", json=body)
                if r.status_code == 200:
                    self.acked_events.extend(ids)
            else:
                key = self.rng.randrange(40)
                op = self.rng.choice(["upsert", "upsert", "delete"])
                status = None if op == "delete" else f"s{self.seed}-{n}"
                payload: dict[str, Any] = {"order_id": key}
                if status:
                    payload["status"] = status
                body = {
                    "records": [
                        {"idempotency_key": f"o{self.seed}-{n}", "op": op, "payload": payload}
                    ]
                }
                r = self.client.post("/v1/ingest/orders", json=body)
                if r.status_code == 200:
                    token = r.json()["max_visibility_token"]
                    self.acked_orders.append((token, op, key, status))
            if r.status_code == 200:
                self.max_token = max(self.max_token, r.json()["max_visibility_token"])
            else:
                self.errors.append(r.text)
        self.client.close()


@pytest.mark.slow
def test_coordinator_kills_lose_nothing(
    spawn_server: Callable[..., ServerProcess], dsn: str
) -> None:
    api = spawn_server()
    api.start(role="api")
    client = httpx.Client(
        base_url=api.base_url, timeout=60, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    )
    for body in (ORDERS, EVENTS):
        assert client.post("/v1/tables", json=body).status_code == 201
    coordinator = spawn_server()
    writers = [Writer(api.base_url, seed) for seed in (1, 2)]
    for w in writers:
        w.start()
    rng = random.Random(7)
    kills = 0
    faults_hit: list[str] = []
    try:
        for _ in range(RANDOM_KILLS):
            coordinator.start(role="coordinator", wait=False)
            # A random moment, not a synchronisation: anything may be in flight.
            threading.Event().wait(rng.uniform(0.5, 3.0))
            coordinator.kill()
            kills += 1
        for point in FAULT_POINTS:
            coordinator.start(
                role="coordinator",
                wait=False,
                extra_env={"DUCKMESH_ENABLE_FAULTS": "1", "DUCKMESH_FAULTS": f"{point}=kill"},
            )
            assert coordinator.proc is not None
            code = coordinator.proc.wait(60)  # it kills itself at the fault point
            assert code == -9, f"{point}: exit {code}\n{coordinator.logs()[-3000:]}"
            faults_hit.append(point)
            kills += 1
        coordinator.start(role="coordinator", wait=False)
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(30)
    assert not any(w.errors for w in writers), [w.errors[:3] for w in writers]
    top = max(w.max_token for w in writers)
    acked_events = [i for w in writers for i in w.acked_events]
    acked_orders = sorted(o for w in writers for o in w.acked_orders)

    def query(sql: str) -> list[list[Any]]:
        r = client.post(
            "/v1/query",
            json={
                "sql": sql,
                "min_visibility_token": top,
                "consistency_timeout_ms": 60_000,
                "row_limit": 1_000_000,
            },
        )
        assert r.status_code == 200, r.text
        rows: list[list[Any]] = r.json()["rows"]
        return rows

    counts = query("select id, count(*) from events group by id")
    assert len(counts) == len(acked_events)
    assert {row[0] for row in counts} == set(acked_events)
    assert all(row[1] == 1 for row in counts)
    model: dict[int, str | None] = {}
    for _token, op, key, status in acked_orders:
        if op == "delete":
            model.pop(key, None)
        else:
            model[key] = status
    assert query("select order_id, status from orders order by 1") == [
        [k, v] for k, v in sorted(model.items())
    ]
    with psycopg.connect(dsn) as conn:
        marks = [
            r[0]
            for r in conn.execute(
                "SELECT max_visibility_token FROM snapshot WHERE tenant_id = 'default'"
                " ORDER BY snapshot_id"
            )
        ]
    assert marks == sorted(marks), "a watermark went back"
    env = dict(os.environ, DUCKMESH_CATALOG_DSN=dsn)
    verify = subprocess.run(
        [sys.executable, "-m", "duckmesh.cli.main", "replay", "verify"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    coordinator.terminate()
    client.close()
    print(
        f"\ncrash test: {len(acked_events) + len(acked_orders)} acked records, "
        f"{kills} kills ({RANDOM_KILLS} random, fault points: {', '.join(faults_hit)}), "
        f"{len(marks)} snapshots, max token {top}"
    )
