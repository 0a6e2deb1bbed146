"""Write-to-visible latency under steady load, at default settings.

Background writers keep a steady ingest going (10-record requests at a fixed
rate). A probe measures, one at a time:
- mode B: a write with ``wait_for_visibility`` — the time until the server
  answers that the write is visible (write-to-visible, ack included);
- mode A: a write, then a query with its token — the strict write→query
  latency a client sees.
The baseline in the same run is the plain ack latency (a write without wait).

    python -m scenarios.bench_visibility [--seconds 20] [--rate 2000]
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time

from scenarios.harness import (
    EVENTS_TABLE,
    HttpClient,
    Server,
    summary_ms,
    target_line,
    write_report,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=2000, help="background records/s")
    ap.add_argument("--writers", type=int, default=4)
    args = ap.parse_args()
    ids = itertools.count()
    with Server() as server:
        with server.client() as c:
            assert c.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        stop = time.monotonic() + args.seconds
        sent = [0] * args.writers

        def background(n: int) -> None:
            client = HttpClient(server.port)
            interval = args.writers * 10 / args.rate  # seconds between 10-record requests
            next_at = time.monotonic()
            while time.monotonic() < stop:
                recs = [
                    {"idempotency_key": f"bg{i}", "payload": {"id": i, "value": 1.0}}
                    for i in (next(ids) for _ in range(10))
                ]
                status, _ = client.post("/v1/ingest/events", {"records": recs})
                sent[n] += 10 if status == 200 else 0
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # pacing the load generator, not synchronisation

        threads = [threading.Thread(target=background, args=(n,)) for n in range(args.writers)]
        for t in threads:
            t.start()
        probe = HttpClient(server.port)
        ack: list[float] = []
        mode_b: list[float] = []
        mode_a: list[float] = []
        errors = 0
        time.sleep(1.0)  # let the steady state settle before sampling
        while time.monotonic() < stop - 1:
            i = next(ids)
            rec = {"records": [{"idempotency_key": f"p{i}", "payload": {"id": i, "value": 2.0}}]}
            t0 = time.perf_counter()
            status, body = probe.post("/v1/ingest/events", rec)
            ack.append(time.perf_counter() - t0)
            errors += status != 200
            i = next(ids)
            t0 = time.perf_counter()
            status, body = probe.post(
                "/v1/ingest/events",
                {
                    "records": [{"idempotency_key": f"p{i}", "payload": {"id": i, "value": 2.0}}],
                    "wait_for_visibility": True,
                },
            )
            mode_b.append(time.perf_counter() - t0)
            errors += status != 200
            i = next(ids)
            t0 = time.perf_counter()
            status, body = probe.post(
                "/v1/ingest/events",
                {"records": [{"idempotency_key": f"p{i}", "payload": {"id": i, "value": 2.0}}]},
            )
            token = body.get("max_visibility_token")
            status2, _ = probe.post(
                "/v1/query",
                {
                    "sql": f"select count(*) from events where id = {i}",
                    "min_visibility_token": token,
                },
            )
            mode_a.append(time.perf_counter() - t0)
            errors += status != 200 or status2 != 200
        for t in threads:
            t.join()
        rss = server.rss_mib()
        achieved = sum(sent) / args.seconds
    results = {
        "background_records_per_s": round(achieved),
        "ack": summary_ms(ack),
        "write_to_visible_mode_b": summary_ms(mode_b),
        "strict_write_query_mode_a": summary_ms(mode_a),
        "errors": errors,
        "server_rss_mib": round(rss, 1),
    }
    print(f"\nsteady load ~{achieved:,.0f} records/s in 10-record requests, default settings")
    for label, key in (
        ("ack (no wait)", "ack"),
        ("write-to-visible (mode B)", "write_to_visible_mode_b"),
        ("strict write->query (mode A)", "strict_write_query_mode_a"),
    ):
        s = results[key]
        print(
            f"  {label:<30} n={s['n']:<5} p50={s['p50_ms']:.1f} ms  p95={s['p95_ms']:.1f} ms"
            f"  p99={s['p99_ms']:.1f} ms"
        )
    print(f"  errors: {errors}; server RSS {rss:.0f} MiB")
    print("targets:")
    print(
        target_line(
            "write-to-visible p95 ms",
            results["write_to_visible_mode_b"]["p95_ms"],
            250,
            lower_is_better=True,
        )
    )
    print(
        target_line(
            "mode A p95 ms",
            results["strict_write_query_mode_a"]["p95_ms"],
            300,
            lower_is_better=True,
        )
    )
    write_report("visibility", {"seconds": args.seconds, "target_rate": args.rate, **results})


if __name__ == "__main__":
    main()
