"""Queries on S3 storage: cold and warm cache, against raw DuckDB over the same files.

A writer (``duckmesh serve``, role all) stores its Parquet files in a bucket
of the S3-compatible test server (moto, local). Then, for each cold run, a
fresh query-only process (``--role api``, its own data directory and empty
cache, same catalog and bucket) answers its first query: that one downloads
the snapshot's files (bytes fetched read from its metrics). The last reader
then runs the query benchmark's queries warm, interleaved with a raw
in-process DuckDB over the very files in its cache (same thread count).

    python -m scenarios.bench_s3 [--rows 300000] [--repeat 15] [--cold-runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx

from duckmesh_testing.procs import server_env, spawn_serve, stop
from duckmesh_testing.s3server import S3TestServer
from scenarios.bench_query import QUERIES, load
from scenarios.harness import EVENTS_TABLE, KEY, Server, free_port, target_line, write_report

HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def metric(text: str, name: str, label: str = "") -> float:
    pattern = rf"^{re.escape(name)}(?:{{[^}}]*{re.escape(label)}[^}}]*}})? ([0-9.e+-]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


class Reader:
    """A query-only process with its own data directory and an empty cache."""

    def __init__(self, writer: Server, s3_env: dict[str, str], n: int | str) -> None:
        self.port = free_port()
        self.dir = writer.dir / f"reader-{n}"
        env = server_env(
            DUCKMESH_DATA_DIR=str(self.dir),
            DUCKMESH_HTTP_PORT=str(self.port),
            DUCKMESH_CATALOG_DSN=writer.dsn(),
            DUCKMESH_LOG_LEVEL="warning",
            DUCKMESH_LOG_FORMAT="json",
            **s3_env,
        )
        self.proc = spawn_serve("api", env, writer.dir / f"reader-{n}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url("/v1/ready"), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("reader did not become ready")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, sql: str, snapshot_id: int) -> float:
        t = time.perf_counter()
        self.conn.request(
            "POST", "/v1/query", json.dumps({"sql": sql, "snapshot_id": snapshot_id}), HEADERS
        )
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return time.perf_counter() - t

    def fetched_bytes(self) -> float:
        text = httpx.get(self.url("/v1/metrics")).text
        return metric(text, "duckmesh_object_store_bytes_total", 'direction="get"')

    def close(self) -> None:
        self.conn.close()
        stop(self.proc)


def warm_vs_local(
    reader: Reader, local: Reader, files: list[str], snap_id: int, repeat: int
) -> dict[str, Any]:
    """The S3 reader (warm cache) against a local-backend reader over the same
    files and raw DuckDB over them, interleaved."""
    raw = duckdb.connect()
    raw.execute("SET threads = 2")
    raw.execute("SET parquet_metadata_cache = true")
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    columns = 'id, kind, value, "at"'
    raw.execute(f"CREATE VIEW events AS SELECT {columns} FROM read_parquet([{listing}])")

    def direct(sql: str) -> float:
        t = time.perf_counter()
        raw.execute(sql).fetchall()
        return time.perf_counter() - t

    results: dict[str, Any] = {}
    for name, sql in QUERIES.items():
        reader.query(sql, snap_id)
        local.query(sql, snap_id)
        direct(sql)  # warm all three
        a, lo, d = [], [], []
        for _ in range(repeat):
            a.append(reader.query(sql, snap_id))
            lo.append(local.query(sql, snap_id))
            d.append(direct(sql))
        am, lm, dm = statistics.median(a), statistics.median(lo), statistics.median(d)
        results[name] = {
            "s3_warm_ms": round(am * 1000, 3),
            "local_ms": round(lm * 1000, 3),
            "raw_ms": round(dm * 1000, 3),
            "ratio_vs_local": round(am / lm, 3),
            "ratio_vs_raw": round(am / dm, 3),
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--cold-runs", type=int, default=3)
    args = ap.parse_args()
    s3 = S3TestServer(Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{secrets.token_hex(4)}.log")
    bucket = f"bench-{secrets.token_hex(4)}"
    s3.create_bucket(bucket)
    s3_env = {
        **s3.env(),
        "DUCKMESH_OBJECT_STORE_URL": f"s3://{bucket}/dm",
        "DUCKMESH_S3_ENDPOINT_URL": s3.endpoint,
        "DUCKMESH_S3_REGION": "us-east-1",
    }
    try:
        with Server(**s3_env) as writer:
            with writer.client() as c:
                assert c.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
                t0 = time.monotonic()
                token = load(writer, args.rows)
                r = c.post(
                    "/v1/query",
                    json={
                        "sql": "select count(*) from events",
                        "min_visibility_token": token,
                        "consistency_timeout_ms": 120_000,
                    },
                )
                assert r.json()["rows"] == [[args.rows]], r.text
                load_s = time.monotonic() - t0
                snap_id = r.json()["snapshot_id"]
                snap = c.get(f"/v1/snapshots/{snap_id}").json()
            keys = [f["path"] for t in snap["tables"] for f in t["files"]]
            total = sum(f["size_bytes"] for t in snap["tables"] for f in t["files"])
            cold_sql = QUERIES["group_by"]
            cold: list[dict[str, float]] = []
            reader = None
            for n in range(args.cold_runs):
                if reader is not None:
                    reader.close()
                reader = Reader(writer, s3_env, n)
                first = reader.query(cold_sql, snap_id)
                second = reader.query(cold_sql, snap_id)
                cold.append(
                    {
                        "cold_ms": round(first * 1000, 1),
                        "warm_ms": round(second * 1000, 1),
                        "fetched_bytes": reader.fetched_bytes(),
                    }
                )
            assert reader is not None
            cache_dir = reader.dir / "cache"
            files = [str(cache_dir / key) for key in keys]
            # The local backend over the very same files (the cache's layout is
            # the local store's: root/<key>).
            local = Reader(writer, {"DUCKMESH_OBJECT_STORE_URL": f"file://{cache_dir}"}, "local")
            warm = warm_vs_local(reader, local, files, snap_id, args.repeat)
            local.close()
            reader.close()
    finally:
        s3.stop()
    load_avg = os.getloadavg()
    print(
        f"\n{args.rows:,} rows in {len(keys)} files ({total / 1e6:.1f} MB) on S3 (moto, local);"
        f" loaded in {load_s:.1f} s; load average {load_avg[0]:.1f}"
    )
    print(f"cold first query ({cold_sql[:40]}...), fresh reader each run:")
    for run in cold:
        print(
            f"  cold {run['cold_ms']:>8.1f} ms  then warm {run['warm_ms']:>7.1f} ms"
            f"  fetched {run['fetched_bytes'] / 1e6:.1f} MB"
        )
    print(
        f"warm S3 cache vs the local backend and raw DuckDB over the same files"
        f" (medians of {args.repeat}, interleaved):"
    )
    print(f"{'query':<12} {'s3 ms':>9} {'local ms':>9} {'raw ms':>9} {'s3/local':>9} {'s3/raw':>8}")
    for name, r in warm.items():
        print(
            f"{name:<12} {r['s3_warm_ms']:>9.2f} {r['local_ms']:>9.2f} {r['raw_ms']:>9.2f}"
            f" {r['ratio_vs_local']:>9.3f} {r['ratio_vs_raw']:>8.3f}"
        )
    print("targets:")
    for name, r in warm.items():
        ratio = r["ratio_vs_local"]
        print(target_line(f"{name} warm S3 / local", ratio, 1.15, lower_is_better=True))
    write_report(
        "s3",
        {
            "rows": args.rows,
            "files": len(keys),
            "bytes": total,
            "load_seconds": load_s,
            "load_average": load_avg,
            "cold": cold,
            "warm": warm,
        },
    )


if __name__ == "__main__":
    main()
