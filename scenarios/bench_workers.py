"""Per-core scaling of ``duckmesh serve`` and the framework's ceiling.

For 1 and 2 API workers (``DUCKMESH_API_WORKERS``, default layout otherwise:
a process group with the coordinator and maintenance processes), 8 clients
send 1- and 10-record requests (the load of scenarios/bench_ingest.py); then
a bare Quart-Trio app on Hypercorn with the same worker count answers the
same bodies with a constant (scenarios/framework_app.py). The report gives
records/s, ack percentiles, the ratio to the framework's request rate and
how records/s grows from 1 to 2 workers.

    python -m scenarios.bench_workers [--seconds 8] [--clients 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import httpx

from duckmesh_testing.procs import spawn_serve
from scenarios.bench_ingest import run_http
from scenarios.harness import EVENTS_TABLE, ROOT, Server, free_port, write_report


class Framework:
    """The bare app under ``hypercorn -w WORKERS`` (the same socket for all)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Framework:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "hypercorn", "-k", "trio", "-w", str(self.workers)),
                *("-b", f"127.0.0.1:{self.port}", "scenarios.framework_app:app"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{self.port}/v1/ingest/events", content=b"{}")
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the framework app did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


class GroupServer(Server):
    """Plain ``duckmesh serve``: a process group even with one API worker
    (``--role all`` with one worker would be the single-process layout)."""

    def _spawn(self, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return spawn_serve(None, env, self.dir / f"server-{role}.log")


def measure(workers: int, batches: list[int], clients: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": workers, "duckmesh": [], "framework": []}
    with GroupServer(DUCKMESH_API_WORKERS=str(workers)) as server:
        with server.client() as client:
            assert client.post("/v1/tables", json=EVENTS_TABLE).status_code == 201
        for batch in batches:
            out["duckmesh"].append(run_http(server, batch, clients, seconds))
        out["rss_mib"] = round(server.rss_mib(), 1)
    with Framework(workers) as framework:
        for batch in batches:
            out["framework"].append(run_http(framework, batch, clients, seconds))  # type: ignore[arg-type]  # only .port is used
    for dm, fw in zip(out["duckmesh"], out["framework"], strict=True):
        dm["ratio_to_framework_requests"] = round(dm["requests_per_s"] / fw["requests_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batches", default="1,10")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    runs = [measure(int(w), batches, args.clients, args.seconds) for w in args.workers.split(",")]
    print(f"\n{args.clients} clients, {args.seconds:.0f} s per point")
    print(
        f"{'workers':>7} {'batch':>6} {'records/s':>10} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'fw req/s':>9} {'ratio':>6} {'RSS MiB':>8}"
    )
    for run in runs:
        for dm, fw in zip(run["duckmesh"], run["framework"], strict=True):
            a = dm["ack"]
            print(
                f"{run['workers']:>7} {dm['batch']:>6} {dm['records_per_s']:>10,.0f} "
                f"{a['p50_ms']:>7.2f} {a['p95_ms']:>7.2f} {a['p99_ms']:>7.2f} "
                f"{fw['requests_per_s']:>9,.0f} {dm['ratio_to_framework_requests']:>6.2f} "
                f"{run['rss_mib']:>8.0f}"
            )
    scaling = {}
    if len(runs) >= 2:
        for first, last in zip(runs[0]["duckmesh"], runs[-1]["duckmesh"], strict=True):
            scaling[first["batch"]] = round(last["records_per_s"] / first["records_per_s"], 2)
        print(f"records/s, {runs[-1]['workers']} workers over {runs[0]['workers']}: {scaling}")
    write_report(
        "workers",
        {"clients": args.clients, "seconds": args.seconds, "runs": runs, "scaling": scaling},
    )


if __name__ == "__main__":
    main()
