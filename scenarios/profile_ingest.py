"""Where the small-request ingest path spends its CPU, on a real ``duckmesh serve``.

A process group with one API worker (so every request lands on the process
being sampled) takes 8 clients' 1- and 10-record requests while py-spy
samples the API worker and the coordinator process (on-CPU samples only).
Each API sample is put in one bucket by the frames on its stack: the bus
transaction (the group commit's publish thread, psycopg), auth, parse,
validate, admission (backpressure, quotas, limits), response, metrics,
logging, thread hops (trio.to_thread) and the rest of the framework
(Hypercorn, h11, Quart, Trio's scheduler). psutil gives each process's CPU
seconds, so the report says microseconds of CPU per request and per record.

    pip install py-spy    # a profiler, not a dependency of DuckMesh
    python -m scenarios.profile_ingest [--seconds 8] [--clients 8]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from scenarios.bench_ingest import run_http
from scenarios.bench_workers import GroupServer
from scenarios.harness import EVENTS_TABLE, write_report

# (bucket, any of these substrings in a frame) in priority order: the first
# bucket with a matching frame anywhere on the stack takes the sample.
API_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("bus transaction", ("duckmesh/bus/", "psycopg", "group_commit.py", "duckmesh/db.py")),
    ("auth", ("principal (duckmesh/api/http.py", "duckmesh/auth/")),
    ("admission", ("duckmesh/ingest/backlog.py", "duckmesh/ingest/limits.py")),
    ("validate", ("duckmesh/ingest/validation.py", "duckmesh/api/validators.py")),
    ("parse", ("json_body (", "parse_json (", "duckmesh/api/bodies.py", "receive_body (")),
    ("response", ("json_response (", "error_response (")),
    ("metrics", ("prometheus_client",)),
    ("logging", ("structlog", "logging/")),
    ("thread hops", ("trio/_threads.py", "threading.py")),
    ("route (rest)", ("duckmesh/api/",)),
    ("framework", ("",)),
]
COORDINATOR_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("claim + ack (bus)", ("duckmesh/bus/",)),
    ("parquet/arrow", ("duckmesh/coordinator/parquet.py", "duckmesh/coordinator/columnar.py")),
    ("catalog publish", ("duckmesh/catalog/", "duckmesh/events/")),
    ("committer (rest)", ("duckmesh/coordinator/",)),
    ("psycopg", ("psycopg",)),
    ("other", ("",)),
]


def group_pids(root: int) -> dict[str, int]:
    """Name -> pid of the group's children (``serve --role ROLE``): the role,
    numbered from the second process of a role on (api, api-1, ...)."""
    pids: dict[str, int] = {}
    for child in psutil.Process(root).children():
        cmd = child.cmdline()
        if "--role" in cmd:
            role = cmd[cmd.index("--role") + 1]
            name, n = role, 0
            while name in pids:
                n += 1
                name = f"{role}-{n}"
            pids[name] = child.pid
    return pids


def bucket_samples(raw: str, buckets: list[tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """Samples per bucket from py-spy's raw (collapsed-stack) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        for name, needles in buckets:
            if any(needle in stack for needle in needles):
                counts[name] += int(n)
                break
    return dict(counts)


def profile_point(
    server: GroupServer, pids: dict[str, int], batch: int, clients: int, seconds: float
) -> dict[str, Any]:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when not on PATH
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    assert spy, "py-spy is not installed (pip install py-spy)"
    reports = Path.cwd() / "reports"
    reports.mkdir(exist_ok=True)
    outs = {role: reports / f"profile-{role}-{batch}.txt" for role in ("api", "coordinator")}
    procs = {role: psutil.Process(pid) for role, pid in pids.items()}
    cpu_before = {role: sum(p.cpu_times()[:2]) for role, p in procs.items()}
    spies = [
        subprocess.Popen(
            [
                *(spy, "record", "--pid", str(pids[role]), "--format", "raw", "--rate", "250"),
                *("--duration", str(int(seconds)), "--output", str(out), "--gil"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for role, out in outs.items()
    ]
    result: dict[str, Any] = {}
    load = threading.Thread(target=lambda: result.update(run_http(server, batch, clients, seconds)))
    load.start()
    load.join()
    cpu = {role: sum(p.cpu_times()[:2]) - cpu_before[role] for role, p in procs.items()}
    for s in spies:
        s.wait(60)
    requests = result["requests_per_s"] * seconds
    records = result["records_per_s"] * seconds
    point: dict[str, Any] = {"load": result}
    for role, buckets in (("api", API_BUCKETS), ("coordinator", COORDINATOR_BUCKETS)):
        samples = bucket_samples(Path(outs[role]).read_text(), buckets)
        total = sum(samples.values()) or 1
        per_request_us = cpu[role] / max(requests, 1) * 1e6
        point[role] = {
            "cpu_s": round(cpu[role], 2),
            "cpu_us_per_request": round(per_request_us, 1),
            "cpu_us_per_record": round(cpu[role] / max(records, 1) * 1e6, 1),
            "share": {k: round(v / total, 3) for k, v in sorted(samples.items())},
            "us_per_request": {
                k: round(v / total * per_request_us, 1) for k, v in sorted(samples.items())
            },
        }
    return point


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batches", default="1,10")
    args = ap.parse_args()
    points = []
    with GroupServer(DUCKMESH_API_WORKERS="1") as server:
        assert server.proc is not None
        with server.client() as client:
            assert client.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        pids = group_pids(server.proc.pid)
        for batch in (int(b) for b in args.batches.split(",")):
            point = profile_point(server, pids, batch, args.clients, args.seconds)
            points.append({"batch": batch, **point})
            load = point["load"]
            print(
                f"\nbatch {batch}: {load['records_per_s']:,.0f} records/s,"
                f" {load['requests_per_s']:,.0f} req/s, ack p95 {load['ack']['p95_ms']:.1f} ms"
            )
            for role in ("api", "coordinator"):
                p = point[role]
                print(
                    f"  {role}: {p['cpu_us_per_request']:.0f} us CPU/request,"
                    f" {p['cpu_us_per_record']:.0f} us CPU/record"
                )
                for name, us in sorted(p["us_per_request"].items(), key=lambda kv: -kv[1]):
                    print(f"    {name:<20} {p['share'][name]:>6.1%} {us:>8.0f} us/request")
    write_report("profile_ingest", {"clients": args.clients, "points": points})


if __name__ == "__main__":
    main()
