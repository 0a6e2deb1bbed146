"""Many tenants on one node: warm query cost against the number of tenants.

One server; tenants are added in steps (1, 10, 100, 1,000 by default), each
with one small table ``ev`` of ``--rows`` rows. At each step every tenant is
queried once (cold: builds its query database), then ``select count(*) from
ev`` runs round-robin over all tenants from 8 clients (warm). Reported per
step: p50/p95, the ratio to the 1-tenant step of the same run, the server's
RSS and thread count. Then ``select 42`` and ``GET /v1/health`` alternate on
one connection (what a client sees for a tiny query against the framework's
floor), and a dashboard loop (the same 5 queries again and again while ingest
runs) reports result-cache hits and their latency.

    python -m scenarios.bench_tenants [--steps 1,10,100,1000] [--rows 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from typing import Any

import psutil
import psycopg

from duckmesh.catalog import commands
from scenarios.harness import Server, summary_ms, target_line, write_report

TABLE = {
    "name": "ev",
    "columns": [{"name": "id", "type": "BIGINT"}, {"name": "v", "type": "DOUBLE"}],
}
CLIENTS = 8


class Tenant:
    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.token = 0


def call(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str], body: Any
) -> tuple[int, dict[str, Any]]:
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def add_tenants(server: Server, first: int, count: int, rows: int) -> list[Tenant]:
    tenants = []
    with psycopg.connect(server.dsn(), autocommit=True) as pg:
        for n in range(first, first + count):
            name = f"t{n:05d}"
            with pg.transaction():
                commands.create_tenant(pg, name, actor="bench")
                _, key = commands.issue_key(
                    pg, name, ["query_reader", "ingest_writer", "table_admin"], actor="bench"
                )
            tenants.append(Tenant(name, key))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    for t in tenants:
        status, body = call(conn, "POST", "/v1/tables", t.headers, TABLE)
        assert status == 201, body
        recs = [{"idempotency_key": f"k{i}", "payload": {"id": i, "v": i / 2}} for i in range(rows)]
        status, body = call(conn, "POST", "/v1/ingest/ev", t.headers, {"records": recs})
        assert status == 200, body
        t.token = body["max_visibility_token"]
    conn.close()
    return tenants


def query(conn: http.client.HTTPConnection, t: Tenant, sql: str, **extra: Any) -> dict[str, Any]:
    status, body = call(conn, "POST", "/v1/query", t.headers, {"sql": sql, **extra})
    assert status == 200, body
    return body


def process_figures(server: Server) -> dict[str, float]:
    assert server.proc is not None
    procs = [psutil.Process(server.proc.pid)]
    procs += procs[0].children(recursive=True)
    return {
        "rss_mib": round(server.rss_mib(), 1),
        "threads": sum(p.num_threads() for p in procs),
        "max_threads_one_process": max(p.num_threads() for p in procs),
    }


def round_robin(
    server: Server, tenants: list[Tenant], rows: int, per_client: int
) -> tuple[list[float], list[float]]:
    """Client-seen seconds and the server's own ``stats.duration_ms`` (in s)."""
    samples: list[float] = []
    server_s: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        mine, theirs = [], []
        for i in range(per_client):
            t = tenants[(n + i * CLIENTS) % len(tenants)]
            began = time.perf_counter()
            body = query(conn, t, "select count(*) as n from ev")
            mine.append(time.perf_counter() - began)
            theirs.append(body["stats"]["duration_ms"] / 1000)
            assert body["rows"] == [[rows]], (t.name, body["rows"])
        conn.close()
        with lock:
            samples.extend(mine)
            server_s.extend(theirs)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return samples, server_s


def step(server: Server, tenants: list[Tenant], rows: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    cold = []
    for t in tenants:  # every tenant once, waiting for its rows (builds its database)
        began = time.perf_counter()
        body = query(conn, t, "select count(*) from ev", min_visibility_token=t.token)
        cold.append(time.perf_counter() - began)
        assert body["rows"] == [[rows]], body
    conn.close()
    per_client = max(100, 2 * len(tenants) // CLIENTS)
    # Warm-up: each client visits each of its tenants once (a client's
    # connection stays on one API worker, and each worker has its own
    # databases: the cold pass above warmed only the worker it landed on).
    round_robin(server, tenants, rows, max(10, -(-len(tenants) // CLIENTS)))
    warm, warm_server = round_robin(server, tenants, rows, per_client)
    # The 1-tenant reference again, right now: the machine's load drifts.
    single, single_server = round_robin(server, tenants[:1], rows, 100)
    result: dict[str, Any] = {
        "tenants": len(tenants),
        "cold": summary_ms(cold),
        "warm": summary_ms(warm),
        "warm_server_duration": summary_ms(warm_server),
        "one_tenant_now": summary_ms(single),
        "one_tenant_now_server_duration": summary_ms(single_server),
    }
    result["ratio_p50_to_one_tenant_now"] = round(
        result["warm"]["p50_ms"] / result["one_tenant_now"]["p50_ms"], 2
    )
    return result


def tiny_vs_health(server: Server, tenant: Tenant, repeat: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    tiny, health, server_ms = [], [], []
    for _ in range(repeat):
        began = time.perf_counter()
        body = query(conn, tenant, "select 42")
        tiny.append(time.perf_counter() - began)
        server_ms.append(body["stats"]["duration_ms"] / 1000)
        began = time.perf_counter()
        status, _ = call(conn, "GET", "/v1/health", tenant.headers, None)
        health.append(time.perf_counter() - began)
        assert status == 200
    conn.close()
    t, h = summary_ms(tiny), summary_ms(health)
    return {
        "select_42": t,
        "health": h,
        "server_duration": summary_ms(server_ms),
        "gap_p50_ms": round(t["p50_ms"] - h["p50_ms"], 3),
    }


DASHBOARD = [
    "select count(*) from ev",
    "select sum(v) from ev",
    "select max(id) from ev",
    "select id % 10 as b, count(*) from ev group by b order by b",
    "select avg(v) from ev where id > 10",
]


def dashboard(server: Server, tenant: Tenant, seconds: float) -> dict[str, Any]:
    """The same 5 queries in a loop while another client ingests every 200 ms."""
    stop = threading.Event()

    def ingest() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        n = 10_000_000
        while not stop.is_set():
            recs = [{"idempotency_key": f"k{n}", "payload": {"id": n, "v": 1.0}}]
            status, body = call(conn, "POST", "/v1/ingest/ev", tenant.headers, {"records": recs})
            assert status == 200, body
            n += 1
            stop.wait(0.2)
        conn.close()

    writer = threading.Thread(target=ingest)
    writer.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    hits: list[float] = []
    misses: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for sql in DASHBOARD:
                began = time.perf_counter()
                body = query(conn, tenant, sql)
                elapsed = time.perf_counter() - began
                (hits if body["stats"].get("cached") else misses).append(elapsed)
    finally:
        stop.set()
        writer.join()
        conn.close()
    total = len(hits) + len(misses)
    return {
        "queries": total,
        "hit_rate": round(len(hits) / total, 3) if total else 0.0,
        "hit": summary_ms(hits),
        "miss": summary_ms(misses),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="1,10,100,1000")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--tiny-repeat", type=int, default=300)
    ap.add_argument("--dashboard-s", type=float, default=10.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    # The steps measure the query plane itself: no result cache.
    with Server(DUCKMESH_QUERY_RESULT_CACHE_BYTES="0") as server:
        tenants: list[Tenant] = []
        results: list[dict[str, Any]] = []
        for count in steps:
            tenants += add_tenants(server, len(tenants), count - len(tenants), args.rows)
            result = step(server, tenants, args.rows)
            result.update(process_figures(server))
            result["ratio_p50_to_1"] = round(
                result["warm"]["p50_ms"] / (results[0] if results else result)["warm"]["p50_ms"], 2
            )
            results.append(result)
            print(
                f"{count:>5} tenants: warm p50 {result['warm']['p50_ms']:.2f} ms "
                f"p95 {result['warm']['p95_ms']:.2f} ms (x{result['ratio_p50_to_1']} of step 1, "
                f"x{result['ratio_p50_to_one_tenant_now']} of 1 tenant now), "
                f"server p50 {result['warm_server_duration']['p50_ms']:.2f} ms "
                f"(1 tenant now {result['one_tenant_now_server_duration']['p50_ms']:.2f}), "
                f"cold p50 {result['cold']['p50_ms']:.1f} ms, RSS {result['rss_mib']:.0f} MiB, "
                f"threads {result['threads']} (max/process {result['max_threads_one_process']})"
            )
        tiny = tiny_vs_health(server, tenants[0], args.tiny_repeat)
        print(
            f"select 42 p50 {tiny['select_42']['p50_ms']:.2f} ms, health p50 "
            f"{tiny['health']['p50_ms']:.2f} ms, gap {tiny['gap_p50_ms']:.2f} ms, "
            f"server duration_ms p50 {tiny['server_duration']['p50_ms']:.2f}"
        )
    with Server() as server:  # the default result cache
        [tenant] = add_tenants(server, 0, 1, args.rows)
        dash = dashboard(server, tenant, args.dashboard_s)
        print(
            f"dashboard: {dash['queries']} queries, hit rate {dash['hit_rate']:.2f}, "
            f"hit p50 {dash['hit']['p50_ms']} ms, miss p50 {dash['miss']['p50_ms']} ms"
        )
    last = results[-1]
    print(
        target_line(
            "p50 ratio, most tenants / 1", last["ratio_p50_to_1"], 1.5, lower_is_better=True
        )
    )
    print(target_line("RSS MiB", last["rss_mib"], 1024, lower_is_better=True))
    print(
        target_line(
            "threads per process", last["max_threads_one_process"], 200, lower_is_better=True
        )
    )
    print(target_line("select 42 - health, ms", tiny["gap_p50_ms"], 1.5, lower_is_better=True))
    write_report(
        "bench_tenants" + (f"_{args.label}" if args.label else ""),
        {
            "load_average": os.getloadavg(),
            "rows_per_tenant": args.rows,
            "clients": CLIENTS,
            "steps": results,
            "tiny_query": tiny,
            "dashboard": dash,
        },
    )


if __name__ == "__main__":
    main()
