"""Where a small request's CPU goes, by process: the whole group, Postgres
and the load generator, against the bare framework's server CPU.

Default ``duckmesh serve`` (a process group, ADR 0012) takes 8 clients'
1- and 10-record requests; psutil measures the CPU seconds of each role's
processes, of the embedded Postgres (postmaster and backends) and of this
process (the load generator), divided by the requests answered. The bare
Quart-Trio app (scenarios/framework_app.py) with the same worker count and
load gives the framework's own CPU per request in the same run. On a shared
machine the throughput is noisy; CPU per request is the steadier figure.

    python -m scenarios.cpu_by_process [--seconds 6] [--batches 10,1] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import psutil

from scenarios.bench_ingest import run_http
from scenarios.bench_workers import Framework, GroupServer
from scenarios.harness import EVENTS_TABLE, Server, write_report

Groups = dict[str, list[psutil.Process]]


def group_processes(server: Server) -> Groups:
    """Role -> processes: the root, each child role, and Postgres."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    out: Groups = {"root": [root]}
    for child in root.children():
        cmd = child.cmdline()
        role = cmd[cmd.index("--role") + 1] if "--role" in cmd else child.name()
        out.setdefault(role, []).append(child)
    # The embedded Postgres is not a child of the group: its postmaster names
    # the data directory on its command line; the backends are its children.
    postmasters = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "postgres" and str(server.dir) in " ".join(p.info["cmdline"] or [])
    ]
    out["postgres"] = [q for p in postmasters for q in (p, *p.children(recursive=True))]
    return out


def cpu_seconds(groups: Groups) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, procs in groups.items():
        total = 0.0
        for p in procs:
            try:
                times = p.cpu_times()
            except psutil.NoSuchProcess:  # a backend that ended meanwhile
                continue
            total += times.user + times.system
        out[role] = total
    return out


def measure(
    target: Any, groups: Callable[[], Groups], batch: int, seconds: float
) -> dict[str, Any]:
    """One load point: throughput, ack percentiles, µs of CPU per request by role."""
    run_http(target, batch, 8, 1.5)  # warm-up (connections, caches, JIT-free but steadier)
    procs = groups()
    before, me_before = cpu_seconds(procs), sum(os.times()[:2])
    load = run_http(target, batch, 8, seconds)
    after, me_after = cpu_seconds(procs), sum(os.times()[:2])
    requests = max(1.0, load["requests_per_s"] * seconds)
    used = {role: after[role] - before[role] for role in after}
    used["load generator"] = me_after - me_before
    return {
        "load": load,
        "load_average": round(os.getloadavg()[0], 1),
        "us_per_request": {role: round(s / requests * 1e6) for role, s in used.items()},
        "cores": {role: round(s / seconds, 2) for role, s in used.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batches", default="10,1")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    points: list[dict[str, Any]] = []
    with GroupServer(DUCKMESH_API_WORKERS=str(args.workers)) as server:
        with server.client() as client:
            assert client.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        for batch in batches:
            point = measure(server, lambda: group_processes(server), batch, args.seconds)
            points.append({"batch": batch, "duckmesh": point})
    with Framework(args.workers) as framework:
        assert framework.proc is not None
        top = psutil.Process(framework.proc.pid)
        for batch, point in zip(batches, points, strict=True):
            point["framework"] = measure(
                framework,
                lambda: {"server": [top, *top.children(recursive=True)]},
                batch,
                args.seconds,
            )
    for point in points:
        dm, fw = point["duckmesh"], point["framework"]
        total = sum(v for k, v in dm["us_per_request"].items() if k != "load generator")
        point["duckmesh_server_us_per_request"] = total
        point["framework_server_us_per_request"] = fw["us_per_request"]["server"]
        print(
            f"\nbatch {point['batch']}: {dm['load']['requests_per_s']:,.0f} req/s"
            f" (framework {fw['load']['requests_per_s']:,.0f}), load average"
            f" {dm['load_average']} / {fw['load_average']}"
        )
        print(f"  DuckMesh us CPU/request: {dm['us_per_request']} (server total {total})")
        print(f"  framework us CPU/request: {fw['us_per_request']}")
    write_report("cpu_by_process", {"seconds": args.seconds, "points": points})


if __name__ == "__main__":
    main()
