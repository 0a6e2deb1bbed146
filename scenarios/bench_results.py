"""Result transfer: a 1M-row result as Arrow from /v1/query against raw DuckDB.

Runs the same query, interleaved in the same run, (1) in a raw in-process
DuckDB (same thread count) with ``to_arrow_table()`` (the newer name of
``fetch_arrow_table()``), (2) through ``POST /v1/query`` with ``Accept:
application/vnd.apache.arrow.stream`` until the client holds a
``pyarrow.Table``, and (3) as JSON rows, reported as rows/s beside it. The
query generates its rows (no Parquet is read), so the ratio measures the
result path: sandbox, encoding, HTTP and decoding.

    python -m scenarios.bench_results [--rows 1000000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from scenarios.harness import Server, target_line, write_report

ARROW = "application/vnd.apache.arrow.stream"


def result_sql(rows: int) -> str:
    return (
        "SELECT i AS id, i * 0.5 AS value, 'row-' || i::VARCHAR AS label, i % 7 = 0 AS flag"
        f" FROM range({int(rows)}) t(i)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    sql = result_sql(args.rows)
    raw = duckdb.connect()
    raw.execute("SET threads = 2")
    with Server(DUCKMESH_QUERY_MAX_ROW_LIMIT=str(max(args.rows, 1_000_000))) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)

        def post(accept: str) -> http.client.HTTPResponse:
            body = json.dumps({"sql": sql, "row_limit": args.rows})
            headers = {**server.headers, "Content-Type": "application/json", "Accept": accept}
            conn.request("POST", "/v1/query", body, headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()[:500]
            return resp

        def api_arrow() -> pa.Table:
            # Decoded as it arrives, as a client would (no copy of the whole body first).
            resp = post(ARROW)
            table = pa.ipc.open_stream(resp).read_all()
            assert not resp.read()
            return table

        def api_json() -> dict[str, Any]:
            result: dict[str, Any] = json.loads(post("application/json").read())
            return result

        def direct() -> pa.Table:
            return raw.sql(sql).to_arrow_table()

        runs: dict[str, Callable[[], Any]] = {
            "raw_arrow": direct,
            "api_arrow": api_arrow,
            "api_json": api_json,
        }
        first = {name: run() for name, run in runs.items()}  # warm, and check
        assert first["api_arrow"].num_rows == args.rows == first["raw_arrow"].num_rows
        assert first["api_arrow"].equals(first["raw_arrow"])
        assert len(first["api_json"]["rows"]) == args.rows, "JSON result was truncated"
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        rss = server.rss_mib()
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    ratio = medians["api_arrow"] / medians["raw_arrow"]
    print(f"\n{args.rows:,} rows, medians of {args.repeat} interleaved runs")
    for name, seconds in medians.items():
        print(f"{name:<10} {seconds * 1000:>9.1f} ms {args.rows / seconds:>14,.0f} rows/s")
    print(f"Arrow over HTTP / raw DuckDB Arrow: {ratio:.2f}x; server RSS {rss:.0f} MiB")
    print("targets:")
    print(target_line("api_arrow / raw_arrow", ratio, 1.5, lower_is_better=True))
    write_report(
        "results",
        {
            "rows": args.rows,
            "median_ms": {name: round(s * 1000, 3) for name, s in medians.items()},
            "rows_per_s": {name: round(args.rows / s) for name, s in medians.items()},
            "arrow_ratio": round(ratio, 3),
            "server_rss_mib": round(rss, 1),
        },
    )


if __name__ == "__main__":
    main()
