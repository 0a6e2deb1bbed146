"""Ingest throughput and ack latency over HTTP, against raw COPY as the ceiling.

8 concurrent clients (threads with keep-alive connections) send requests of
1, 10, 100 and 1000 records for a fixed time each. In the same run the same
rows go through raw Postgres COPY into an equivalent table of the same
server, which is the ceiling the HTTP path is compared with.

    python -m scenarios.bench_ingest [--seconds 8] [--clients 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import psycopg

from scenarios.harness import (
    EVENTS_TABLE,
    HttpClient,
    Server,
    run_threads,
    summary_ms,
    target_line,
    write_report,
)


def payload(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "kind": "click" if i % 3 else "view",
        "value": i * 0.5,
        "at": "2026-11-26T10:00:00",
    }


def run_http(server: Server, batch: int, clients: int, seconds: float) -> dict[str, Any]:
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    records = [0] * clients
    stop = time.monotonic() + seconds

    def client_loop(n: int) -> None:
        client = HttpClient(server.port)
        while time.monotonic() < stop:
            ids = [next(counter) for _ in range(batch)]
            body = json.dumps(
                {
                    "records": [
                        {"idempotency_key": f"b{batch}-{i}", "payload": payload(i)} for i in ids
                    ]
                }
            )
            t0 = time.perf_counter()
            status, _ = client.post("/v1/ingest/events", body)
            latencies[n].append(time.perf_counter() - t0)
            if status == 200:
                records[n] += batch
            else:
                errors[n] += 1
        client.close()

    elapsed = run_threads(client_loop, clients)
    flat = [x for lat in latencies for x in lat]
    return {
        "batch": batch,
        "records_per_s": round(sum(records) / elapsed, 1),
        "requests_per_s": round(len(flat) / elapsed, 1),
        "errors": sum(errors),
        "ack": summary_ms(flat),
    }


def run_copy(server: Server, batch: int, clients: int, seconds: float) -> dict[str, Any]:
    """The ceiling: the same rows and batch sizes through raw COPY, one
    transaction per batch, same number of concurrent connections."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(
            "CREATE TABLE bench_copy (tenant_id text, token bigserial, key text,"
            " payload text, PRIMARY KEY (tenant_id, token))"
        )
        conn.execute("CREATE UNIQUE INDEX ON bench_copy (tenant_id, key)")
    counter = itertools.count()
    done = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def loop(n: int) -> None:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            while time.monotonic() < stop:
                ids = [next(counter) for _ in range(batch)]
                t0 = time.perf_counter()
                with (
                    conn.transaction(),
                    conn.cursor().copy(
                        "COPY bench_copy (tenant_id, key, payload) FROM STDIN"
                    ) as copy,
                ):
                    for i in ids:
                        copy.write_row(("t", f"k{i}", json.dumps(payload(i))))
                latencies[n].append(time.perf_counter() - t0)
                done[n] += batch

    elapsed = run_threads(loop, clients)
    flat = [x for lat in latencies for x in lat]
    return {"batch": batch, "records_per_s": round(sum(done) / elapsed, 1), "ack": summary_ms(flat)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument(
        "--split",
        action="store_true",
        help="run api, coordinator and maintenance as separate processes",
    )
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with Server(split=args.split) as server:
        with server.client() as client:
            assert client.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        for batch in batches:
            cpu = server.cpu_s()
            http = run_http(server, batch, args.clients, args.seconds)
            done = http["records_per_s"] * args.seconds
            # Server CPU per acknowledged record (commits of earlier rows may overlap).
            http["server_cpu_us_per_record"] = round((server.cpu_s() - cpu) / max(done, 1) * 1e6, 1)
            copy = run_copy(server, batch, args.clients, args.seconds)
            http["copy_records_per_s"] = copy["records_per_s"]
            http["ratio_to_copy"] = round(http["records_per_s"] / copy["records_per_s"], 3)
            http["copy_ack"] = copy["ack"]
            rows.append(http)
        rss = server.rss_mib()
    layout = "api, coordinator, maintenance as processes" if args.split else "one process"
    print(
        f"\ningest over HTTP ({layout}), {args.clients} clients,"
        f" {args.seconds:.0f} s per batch size"
    )
    print(
        f"{'batch':>6} {'records/s':>11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'COPY rec/s':>11} {'ratio':>6} {'errors':>6} {'cpu us/rec':>10}"
    )
    for r in rows:
        a = r["ack"]
        print(
            f"{r['batch']:>6} {r['records_per_s']:>11,.0f} {r['requests_per_s']:>8,.0f} "
            f"{a['p50_ms']:>8.2f} {a['p95_ms']:>8.2f} {a['p99_ms']:>8.2f} "
            f"{r['copy_records_per_s']:>11,.0f} {r['ratio_to_copy']:>6.2f} {r['errors']:>6}"
            f" {r['server_cpu_us_per_record']:>10}"
        )
    print(f"server RSS after the run: {rss:.0f} MiB")
    print("targets:")
    by_batch = {r["batch"]: r for r in rows}
    if 10 in by_batch:
        print(
            target_line(
                "records/s at batch 10",
                by_batch[10]["records_per_s"],
                13_000,
                lower_is_better=False,
            )
        )
    if 1000 in by_batch:
        print(
            target_line(
                "records/s at batch 1000",
                by_batch[1000]["records_per_s"],
                100_000,
                lower_is_better=False,
            )
        )
    if 1 in by_batch:
        print(
            target_line(
                "ack p95 ms at batch 1", by_batch[1]["ack"]["p95_ms"], 10, lower_is_better=True
            )
        )
        print(
            target_line(
                "ack p99 ms at batch 1", by_batch[1]["ack"]["p99_ms"], 50, lower_is_better=True
            )
        )
    print(target_line("server RSS MiB", rss, 1024, lower_is_better=True))
    write_report(
        "ingest-split" if args.split else "ingest",
        {
            "split": args.split,
            "clients": args.clients,
            "seconds": args.seconds,
            "results": rows,
            "server_rss_mib": round(rss, 1),
        },
    )


if __name__ == "__main__":
    main()
