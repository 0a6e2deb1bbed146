"""Bulk load: the same rows as CSV, NDJSON, Arrow IPC and Parquet uploads.

1M rows (BIGINT, VARCHAR, DOUBLE, TIMESTAMP), 100,000 rows per request, one
client, measured from the first request to the moment a token-gated query
sees every row (ack-to-visible). In the same run: JSON records at 1,000 per
request (4 clients), ``duckmesh load`` of the same rows as one CSV file, and
two references: Postgres ``COPY`` of the same rows into a heap table with
one unique index (the ingest ceiling users know) and pyarrow writing them to
one zstd Parquet file (the physical floor).

    python -m scenarios.bench_bulk [--rows 1000000] [--chunk 100000] [--json-rows 200000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from scenarios.harness import (
    EVENTS_TABLE,
    KEY,
    ROOT,
    HttpClient,
    Server,
    run_threads,
    target_line,
    write_report,
)

MEDIA = {
    "csv": "text/csv",
    "ndjson": "application/x-ndjson",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}


def make_rows(n: int) -> pa.Table:
    ids = pa.array(range(n), pa.int64())
    kinds = pc.if_else(pc.equal(pc.bit_wise_and(ids, 1), 0), "click", "view")
    values = pc.multiply(ids.cast(pa.float64()), 0.5)
    base = 1_795_000_000_000_000  # 2026-11-18, µs
    at = pc.add(pc.multiply(pc.bit_wise_and(ids, 0xFFFF), 1_000_000), base).cast(pa.timestamp("us"))
    return pa.table({"id": ids, "kind": kinds, "value": values, "at": at})


def encode(kind: str, table: pa.Table) -> bytes:
    sink = io.BytesIO()
    if kind == "csv":
        pa_csv.write_csv(table, sink)
    elif kind == "ndjson":
        for row in table.to_pylist():
            row["at"] = row["at"].isoformat()
            sink.write(json.dumps(row).encode() + b"\n")
    elif kind == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def wait_visible(client: httpx.Client, table: str, token: int, rows: int) -> None:
    r = client.post(
        "/v1/query",
        json={
            "sql": f"select count(*) from {table}",
            "min_visibility_token": token,
            "consistency_timeout_ms": 600_000,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0][0] == rows, r.text


def run_upload(server: Server, kind: str, rows: pa.Table, chunk: int) -> dict[str, Any]:
    table = f"bulk_{kind}"
    bodies = [encode(kind, rows.slice(i, chunk)) for i in range(0, rows.num_rows, chunk)]
    with server.client() as client:
        assert client.post("/v1/tables", json=dict(EVENTS_TABLE, name=table)).status_code == 201
        started = time.perf_counter()
        top = 0
        for n, body in enumerate(bodies):
            r = client.post(
                f"/v1/ingest/{table}",
                content=body,
                headers={"Content-Type": MEDIA[kind], "Idempotency-Key": f"{kind}-{n}"},
            )
            assert r.status_code == 200, r.text
            top = max(top, r.json()["max_visibility_token"])
        acked = time.perf_counter() - started
        wait_visible(client, table, top, rows.num_rows)
        visible = time.perf_counter() - started
    return {
        "format": kind,
        "rows": rows.num_rows,
        "body_mib": round(sum(map(len, bodies)) / 2**20, 1),
        "ack_s": round(acked, 2),
        "visible_s": round(visible, 2),
        "rows_per_s": round(rows.num_rows / visible),
    }


def run_json(server: Server, rows: pa.Table, batch: int, clients: int) -> dict[str, Any]:
    table = "bulk_json"
    records = rows.to_pylist()
    for r in records:
        r["at"] = r["at"].isoformat()
    chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
    bodies: queue.SimpleQueue[str] = queue.SimpleQueue()
    for chunk in chunks:
        body = [{"idempotency_key": str(r["id"]), "payload": r} for r in chunk]
        bodies.put(json.dumps({"records": body}))
    tops = [0] * clients
    with server.client() as client:
        assert client.post("/v1/tables", json=dict(EVENTS_TABLE, name=table)).status_code == 201
    cpu = server.cpu_s()
    started = time.perf_counter()

    def loop(n: int) -> None:
        http = HttpClient(server.port)
        while True:
            try:
                body = bodies.get_nowait()
            except queue.Empty:
                break
            status, out = http.post(f"/v1/ingest/{table}", body)
            assert status == 200, out
            tops[n] = max(tops[n], out["max_visibility_token"])
        http.close()

    run_threads(loop, clients)
    with server.client() as client:
        wait_visible(client, table, max(tops), rows.num_rows)
    visible = time.perf_counter() - started
    return {
        "format": f"json records ({batch}/request, {clients} clients)",
        "rows": rows.num_rows,
        "visible_s": round(visible, 2),
        "rows_per_s": round(rows.num_rows / visible),
        # Server CPU (ingest and commit) per row, ack-to-visible.
        "server_cpu_us_per_row": round((server.cpu_s() - cpu) / rows.num_rows * 1e6, 1),
    }


def run_load(server: Server, rows: pa.Table, chunk: int) -> dict[str, Any]:
    table = "bulk_load"
    with server.client() as client:
        assert client.post("/v1/tables", json=dict(EVENTS_TABLE, name=table)).status_code == 201
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        pa_csv.write_csv(rows, path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
        env["PYTHONPATH"] = str(ROOT)
        started = time.perf_counter()
        command = [sys.executable, "-m", "duckmesh.cli.main", "load", table, str(path)]
        command += ["--chunk-rows", str(chunk), "--wait", "--url", server.base_url]
        done = subprocess.run(
            [*command, "--api-key", KEY], env=env, capture_output=True, text=True, check=False
        )
        visible = time.perf_counter() - started
        size = path.stat().st_size
    assert done.returncode == 0, done.stderr
    return {
        "format": "duckmesh load (csv file)",
        "rows": rows.num_rows,
        "body_mib": round(size / 2**20, 1),
        "visible_s": round(visible, 2),
        "rows_per_s": round(rows.num_rows / visible),
        "summary": done.stdout.strip().splitlines()[-1],
    }


def _rss_by_process(server: Server) -> dict[str, float]:
    """RSS (MiB) of each process of the server's group, named by role and pid."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = p.cmdline()
            role = cmd[cmd.index("--role") + 1] if "--role" in cmd else "main"
            out[f"{role}-{p.pid}"] = p.memory_info().rss / 2**20
        except (psutil.Error, IndexError):
            continue
    return out


def run_big_load(server: Server, gib: float, chunk: int) -> dict[str, Any]:
    """``duckmesh load`` of a CSV of about ``gib`` GiB, sampling the server's
    RSS meanwhile (peak) and the load process's peak RSS."""
    table = "bulk_big"
    with server.client() as client:
        assert client.post("/v1/tables", json=dict(EVENTS_TABLE, name=table)).status_code == 201
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        block = make_rows(1_000_000)
        with pa_csv.CSVWriter(path, block.schema) as writer:
            n = 0
            while path.stat().st_size < gib * 2**30:
                ids = pc.add(block.column("id"), n)
                writer.write_table(block.set_column(0, "id", ids))
                n += block.num_rows
        size = path.stat().st_size
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
        env["PYTHONPATH"] = str(ROOT)
        command = [sys.executable, "-m", "duckmesh.cli.main", "load", table, str(path)]
        command += ["--chunk-rows", str(chunk), "--wait", "--url", server.base_url]
        peak = [server.rss_mib()]
        by_process: dict[str, float] = {}
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*command, "--api-key", KEY],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:
            peak.append(server.rss_mib())
            for name, rss in _rss_by_process(server).items():
                by_process[name] = max(by_process.get(name, 0.0), rss)
            time.sleep(0.2)
            if len(peak) % 25 == 0:  # every ~5 s: where in the load the memory goes
                print(
                    f"  {time.perf_counter() - started:6.0f} s  RSS {peak[-1]:6.0f} MiB", flush=True
                )
        visible = time.perf_counter() - started
        out, err = proc.communicate()
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with server.client() as client:  # compaction kept up (it is the memory peak)
            schema = client.get("/v1/ui/schema").json()
        files = next(t["files"] for t in schema["tables"] if t["name"] == table)
    assert proc.returncode == 0, err
    return {
        "format": f"duckmesh load ({size / 2**30:.2f} GiB csv)",
        "rows": n,
        "body_mib": round(size / 2**20),
        "visible_s": round(visible, 2),
        "rows_per_s": round(n / visible),
        "server_peak_rss_mib": round(max(peak)),
        # Each process's own peak (they need not peak together).
        "server_peak_rss_by_process_mib": {k: round(v) for k, v in sorted(by_process.items())},
        "load_peak_rss_mib": round(child_peak),
        "data_files_after": files,  # 1 per 100,000-row commit without compaction
        "summary": out.strip().splitlines()[-1],
    }


def run_copy(server: Server, rows: pa.Table, chunk: int) -> dict[str, Any]:
    """Postgres COPY (CSV) into a heap table with one unique index, one
    transaction per chunk, on the same Postgres as the server."""
    bodies = [encode("csv", rows.slice(i, chunk)) for i in range(0, rows.num_rows, chunk)]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bulk_copy")
        conn.execute(
            "CREATE TABLE bench_bulk_copy (id bigint, kind text, value double precision,"
            " at timestamp)"
        )
        conn.execute("CREATE UNIQUE INDEX ON bench_bulk_copy (id)")
        started = time.perf_counter()
        for body in bodies:
            with (
                conn.transaction(),
                conn.cursor().copy(
                    "COPY bench_bulk_copy FROM STDIN WITH (FORMAT csv, HEADER true)"
                ) as copy,
            ):
                copy.write(body)
        elapsed = time.perf_counter() - started
    return {
        "format": "postgres COPY (reference)",
        "rows": rows.num_rows,
        "visible_s": round(elapsed, 2),
        "rows_per_s": round(rows.num_rows / elapsed),
    }


def run_parquet_floor(rows: pa.Table) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        pq.write_table(rows, Path(tmp) / "rows.parquet", compression="zstd")
        elapsed = time.perf_counter() - started
    return {
        "format": "pyarrow zstd Parquet file (floor)",
        "rows": rows.num_rows,
        "visible_s": round(elapsed, 2),
        "rows_per_s": round(rows.num_rows / elapsed),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--json-rows", type=int, default=200_000)
    ap.add_argument("--json-clients", type=int, default=4)
    ap.add_argument("--big-csv-gib", type=float, default=0.0, help="also load a CSV this big")
    ap.add_argument(
        "--only",
        default="csv,ndjson,arrow,parquet,load,json",
        help="comma-separated parts to run (COPY and the Parquet floor always run)",
    )
    ap.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the server (repeatable)"
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    server_env = dict(item.split("=", 1) for item in args.env)
    rows = make_rows(args.rows)
    results: list[dict[str, Any]] = []
    with Server(**server_env) as server:
        for kind in MEDIA:
            if kind in only:
                results.append(run_upload(server, kind, rows, args.chunk))
                print(results[-1], flush=True)
        if "load" in only:
            results.append(run_load(server, rows, args.chunk))
            print(results[-1], flush=True)
        if "json" in only:
            json_rows = rows.slice(0, args.json_rows)
            results.append(run_json(server, json_rows, 1000, args.json_clients))
            print(results[-1], flush=True)
        results.append(run_copy(server, rows, args.chunk))
        print(results[-1], flush=True)
        if args.big_csv_gib:
            results.append(run_big_load(server, args.big_csv_gib, args.chunk))
            print(results[-1], flush=True)
        rss = server.rss_mib()
    results.append(run_parquet_floor(rows))
    copy_rate = next(r["rows_per_s"] for r in results if r["format"].startswith("postgres"))
    print(f"\nbulk load, {args.rows:,} rows, {args.chunk:,} rows/request, ack-to-visible")
    print(f"{'path':<44} {'rows/s':>12} {'seconds':>8} {'x COPY':>7}")
    for r in results:
        r["ratio_to_copy"] = round(r["rows_per_s"] / copy_rate, 3)
        print(
            f"{r['format']:<44} {r['rows_per_s']:>12,} {r['visible_s']:>8} {r['ratio_to_copy']:>7}"
        )
    print(f"server RSS after the run: {rss:.0f} MiB")
    by = {r["format"]: r for r in results}
    print("targets:")
    for kind, share in (("arrow", 1.0), ("parquet", 1.0), ("csv", 0.5), ("ndjson", 0.5)):
        if kind not in by:
            continue
        print(
            target_line(
                f"{kind} upload x COPY", by[kind]["ratio_to_copy"], share, lower_is_better=False
            )
        )
    json_row = next((r for r in results if r["format"].startswith("json")), None)
    if json_row is not None:
        print(
            target_line(
                "json records rows/s at 1000/request",
                json_row["rows_per_s"],
                60_000,
                lower_is_better=False,
            )
        )
    write_report(
        "bench_bulk",
        {"rows": args.rows, "chunk": args.chunk, "results": results, "server_rss_mib": round(rss)},
    )


if __name__ == "__main__":
    main()
