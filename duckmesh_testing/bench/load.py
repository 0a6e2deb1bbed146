"""Named load scenarios with bounded duration, and their runner.

Each scenario starts a fresh DuckMesh (embedded Postgres, default settings),
runs paced or unpaced writers for its duration while a probe measures
write-to-visible (mode B) and strict write→query (mode A) one request at a
time, then reports one row: ingest records/s, ack p50/p95/p99,
write-to-visible p50/p95/p99, strict query p50/p95, errors.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from duckmesh_testing.bench.harness import EVENTS_TABLE, HttpClient, Server, run_threads, summary_ms


@attrs.frozen
class LoadScenario:
    name: str
    description: str
    seconds: float = 20.0
    writers: int = 4
    batch: int = 10
    rate: int = 0  # records/s over all writers; 0 = as fast as possible
    tenants: int = 1
    burst_period_s: float = 0.0  # > 0: writers alternate full speed and idle


SCENARIOS: dict[str, LoadScenario] = {
    s.name: s
    for s in (
        LoadScenario("steady", "4 writers, 10-record requests paced at 2,000 records/s", rate=2000),
        LoadScenario(
            "burst",
            "8 writers alternating 2 s at full speed and 2 s idle",
            writers=8,
            burst_period_s=2.0,
        ),
        LoadScenario(
            "many-tenants",
            "8 tenants, one paced writer each, 1,000 records/s in all",
            writers=8,
            tenants=8,
            rate=1000,
        ),
        LoadScenario("big-batches", "4 writers, 1,000-record requests at full speed", batch=1000),
    )
}


def _tenant_keys(server: Server, tenants: int) -> list[str]:
    keys = [server.headers["Authorization"].split(" ", 1)[1]]
    with server.client() as client:
        assert client.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
    for n in range(1, tenants):
        key = _create_tenant(server, f"bench{n}")
        keys.append(key)
        c = HttpClient(server.port, key)
        status, body = c.post("/v1/tables", EVENTS_TABLE)
        c.close()
        assert status == 201, body
    return keys


def _create_tenant(server: Server, tenant: str) -> str:
    from duckmesh.catalog import commands
    from duckmesh.db import Database

    db = Database(server.dsn(), size=2)
    try:
        db.call(lambda c: commands.create_tenant(c, tenant))
        _, key = db.call(
            lambda c: commands.issue_key(
                c, tenant, ["ingest_writer", "query_reader", "table_admin"]
            )
        )
    finally:
        db.close()
    return key


PACE_TOLERANCE = 0.95  # a paced scenario below 95% of its rate missed its pace


def run(
    scenario: LoadScenario, on_progress: Callable[[float], None] | None = None
) -> dict[str, Any]:
    """One scenario on a fresh server; ``on_progress`` gets the seconds elapsed."""
    ids: Iterator[int] = itertools.count()
    lock = threading.Lock()

    def next_ids(n: int) -> list[int]:
        with lock:
            return [next(ids) for _ in range(n)]

    with Server() as server:
        keys = _tenant_keys(server, scenario.tenants)
        began = time.monotonic()
        stop = began + scenario.seconds
        sent = [0] * scenario.writers
        acks: list[list[float]] = [[] for _ in range(scenario.writers)]
        errors = [0] * scenario.writers

        def writer(n: int) -> None:
            client = HttpClient(server.port, keys[n % len(keys)])
            interval = scenario.writers * scenario.batch / scenario.rate if scenario.rate else 0
            next_at = time.monotonic()
            while (now := time.monotonic()) < stop:
                if scenario.burst_period_s and int((now - began) / scenario.burst_period_s) % 2:
                    time.sleep(0.01)  # the idle half of a burst cycle (pacing, not sync)
                    continue
                recs = [
                    {"idempotency_key": f"w{i}", "payload": {"id": i, "kind": "k", "value": 1.0}}
                    for i in next_ids(scenario.batch)
                ]
                t0 = time.perf_counter()
                status, _ = client.post("/v1/ingest/events", {"records": recs})
                acks[n].append(time.perf_counter() - t0)
                if status == 200:
                    sent[n] += scenario.batch
                else:
                    errors[n] += 1
                if interval:
                    next_at += interval
                    if (pause := next_at - time.monotonic()) > 0:
                        time.sleep(pause)  # pacing the generator
            client.close()

        load = threading.Thread(target=run_threads, args=(writer, scenario.writers))
        load.start()
        probe = HttpClient(server.port, keys[0])
        mode_b: list[float] = []
        mode_a: list[float] = []
        probe_errors = 0
        while time.monotonic() < stop - 0.5:
            i = next_ids(1)[0]
            t0 = time.perf_counter()
            status, _ = probe.post(
                "/v1/ingest/events",
                {
                    "records": [{"idempotency_key": f"p{i}", "payload": {"id": i}}],
                    "wait_for_visibility": True,
                },
            )
            mode_b.append(time.perf_counter() - t0)
            probe_errors += status != 200
            i = next_ids(1)[0]
            t0 = time.perf_counter()
            status, body = probe.post(
                "/v1/ingest/events",
                {"records": [{"idempotency_key": f"p{i}", "payload": {"id": i}}]},
            )
            status2, _ = probe.post(
                "/v1/query",
                {
                    "sql": f"select count(*) from events where id = {i}",
                    "min_visibility_token": body.get("max_visibility_token", 0),
                },
            )
            mode_a.append(time.perf_counter() - t0)
            probe_errors += status != 200 or status2 != 200
            if on_progress is not None:
                on_progress(min(time.monotonic() - began, scenario.seconds))
        load.join()
        probe.close()
        elapsed = time.monotonic() - began
        rss = server.rss_mib()
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "seconds": round(elapsed, 1),
        "records_per_s": round(sum(sent) / elapsed, 1),
        "target_records_per_s": scenario.rate or None,
        "pace_missed": bool(scenario.rate) and sum(sent) / elapsed < PACE_TOLERANCE * scenario.rate,
        "ack": summary_ms([x for a in acks for x in a]),
        "write_to_visible": summary_ms(mode_b),
        "strict_query": summary_ms(mode_a),
        "errors": sum(errors) + probe_errors,
        "server_rss_mib": round(rss, 1),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'scenario':<13} {'rec/s':>9} {'ack p50':>8} {'p95':>7} {'p99':>7} "
        f"{'vis p50':>8} {'p95':>7} {'p99':>7} {'strict p50':>10} {'p95':>7} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        a, v, q = r["ack"], r["write_to_visible"], r["strict_query"]
        print(
            f"{r['scenario']:<13} {r['records_per_s']:>9,.0f} {a['p50_ms']:>8.1f} "
            f"{a['p95_ms']:>7.1f} {a['p99_ms']:>7.1f} {v['p50_ms']:>8.1f} {v['p95_ms']:>7.1f} "
            f"{v['p99_ms']:>7.1f} {q['p50_ms']:>10.1f} {q['p95_ms']:>7.1f} {r['errors']:>6}"
            + ("  MISSED PACE" if r.get("pace_missed") else "")
        )
    for r in rows:
        if r.get("pace_missed"):
            print(
                f"{r['scenario']}: MISSED PACE: {r['records_per_s']:,.0f} of the"
                f" {r['target_records_per_s']:,} records/s asked for"
                " (this machine could not keep up)"
            )
    print(
        "(latencies in ms; vis = write-to-visible, mode B; strict = write then query with"
        " the token, mode A)"
    )
