"""Query overhead: /v1/query against raw DuckDB over the same Parquet files.

Loads ``--rows`` rows through the real ingest path, waits until they are
visible, reads the snapshot's file list from ``GET /v1/snapshots/{id}``, and
runs each query through the API and through a raw in-process DuckDB view over
exactly those files (same thread count), interleaved, in the same run.

    python -m scenarios.bench_query [--rows 1000000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

from scenarios.harness import EVENTS_TABLE, Server, summary_ms, target_line, write_report

QUERIES = {
    "group_by": "select kind, count(*), avg(value) from events group by kind order by kind",
    "filter_topk": "select id % 1000 as b, sum(value) as s from events where value > 100"
    " group by b order by s desc limit 10",
    "distinct": 'select count(distinct id), min("at"), max("at") from events',
    "tiny_point": "select id, kind from events where id = 4242",
    "tiny_const": "select 42",
}
KINDS = ["click", "view", "buy", "scroll"]


def load(server: Server, rows: int, per_request: int = 10_000, clients: int = 4) -> int:
    chunks = list(range(0, rows, per_request))
    top = [0]

    def worker(mine: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for start in mine:
            recs = [
                {
                    "idempotency_key": f"k{i}",
                    "payload": {
                        "id": i,
                        "kind": KINDS[i % 4],
                        "value": (i * 7919) % 1000 / 3.0,
                        "at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00",
                    },
                }
                for i in range(start, min(start + per_request, rows))
            ]
            conn.request(
                "POST",
                "/v1/ingest/events",
                json.dumps({"records": recs}),
                {**server.headers, "Content-Type": "application/json"},
            )
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == 200, body
            top[0] = max(top[0], body["max_visibility_token"])

    threads = [threading.Thread(target=worker, args=(chunks[n::clients],)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return top[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    # The result cache would answer every repeat of a pinned query without
    # running it; this compares execution, so it is off.
    with Server(DUCKMESH_QUERY_RESULT_CACHE_BYTES="0") as server:
        with server.client() as c:
            assert c.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
            t0 = time.monotonic()
            token = load(server, args.rows)
            r = c.post(
                "/v1/query",
                json={
                    "sql": "select count(*) from events",
                    "min_visibility_token": token,
                    "consistency_timeout_ms": 60_000,
                },
            )
            assert r.json()["rows"] == [[args.rows]], r.text
            load_s = time.monotonic() - t0
            snap_id = r.json()["snapshot_id"]
            snap = c.get(f"/v1/snapshots/{snap_id}").json()
        files = [
            str(Path(server.env["DUCKMESH_DATA_DIR"]) / "objects" / f["path"])
            for t in snap["tables"]
            for f in t["files"]
        ]
        raw = duckdb.connect()
        raw.execute("SET threads = 2")
        raw.execute("SET parquet_metadata_cache = true")
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        raw.execute(
            f'CREATE VIEW events AS SELECT id, kind, value, "at" FROM read_parquet([{listing}])'
        )
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

        def api(sql: str) -> float:
            t = time.perf_counter()
            conn.request(
                "POST",
                "/v1/query",
                json.dumps({"sql": sql, "snapshot_id": snap_id}),
                {**server.headers, "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            return time.perf_counter() - t

        def direct(sql: str) -> float:
            t = time.perf_counter()
            raw.execute(sql).fetchall()
            return time.perf_counter() - t

        results: dict[str, Any] = {}
        for name, sql in QUERIES.items():
            api(sql)
            direct(sql)  # warm both
            a, d = [], []
            for _ in range(args.repeat):
                a.append(api(sql))
                d.append(direct(sql))
            am, dm = statistics.median(a), statistics.median(d)
            results[name] = {
                "api_ms": round(am * 1000, 3),
                "raw_ms": round(dm * 1000, 3),
                "ratio": round(am / dm, 3),
                "added_ms": round((am - dm) * 1000, 3),
            }
        # Strict write -> query (mode A) on the loaded table.
        strict = []
        for i in range(args.repeat * 4):
            ident = args.rows + i
            t = time.perf_counter()
            conn.request(
                "POST",
                "/v1/ingest/events",
                json.dumps(
                    {
                        "records": [
                            {"idempotency_key": f"a{ident}", "payload": {"id": ident, "kind": "a"}}
                        ]
                    }
                ),
                {**server.headers, "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            token = json.loads(resp.read())["max_visibility_token"]
            conn.request(
                "POST",
                "/v1/query",
                json.dumps(
                    {
                        "sql": f"select count(*) from events where id = {ident}",
                        "min_visibility_token": token,
                    }
                ),
                {**server.headers, "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            assert json.loads(resp.read())["rows"] == [[1]]
            strict.append(time.perf_counter() - t)
        mode_a = summary_ms(strict)
        rss = server.rss_mib()
    print(
        f"\n{args.rows:,} rows in {len(files)} files (loaded in {load_s:.1f} s);"
        f" medians of {args.repeat} interleaved runs"
    )
    print(f"{'query':<12} {'api ms':>9} {'raw ms':>9} {'ratio':>7} {'added ms':>9}")
    for name, r in results.items():
        print(
            f"{name:<12} {r['api_ms']:>9.2f} {r['raw_ms']:>9.2f} {r['ratio']:>7.3f}"
            f" {r['added_ms']:>9.2f}"
        )
    print(
        f"strict write->query (mode A): p50 {mode_a['p50_ms']:.1f} ms,"
        f" p95 {mode_a['p95_ms']:.1f} ms (n={mode_a['n']})"
    )
    print(f"server RSS {rss:.0f} MiB")
    print("targets:")
    for name, r in results.items():
        if r["raw_ms"] >= 10:
            print(target_line(f"{name} ratio", r["ratio"], 1.15, lower_is_better=True))
        else:
            print(target_line(f"{name} added ms", r["added_ms"], 3, lower_is_better=True))
    write_report(
        "query",
        {
            "rows": args.rows,
            "files": len(files),
            "load_seconds": load_s,
            "results": results,
            "server_rss_mib": round(rss, 1),
        },
    )


if __name__ == "__main__":
    main()
