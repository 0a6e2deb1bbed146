"""Benchmark plumbing shared by ``duckmesh bench`` and scenarios/.

A server process on a fresh data directory, percentiles, JSON reports.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from duckmesh.embedded import running_dsn
from duckmesh_testing.procs import free_port, server_env, spawn_serve, stop

ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "dmk_bench_oepilNbD_A_T1nBSRJiO9QN8G8Wk9Z0XxCZxgrLM"  # public: local runs only


EVENTS_TABLE: dict[str, Any] = {
    "name": "events",
    "columns": [
        {"name": "id", "type": "BIGINT", "nullable": False},
        {"name": "kind", "type": "VARCHAR"},
        {"name": "value", "type": "DOUBLE"},
        {"name": "at", "type": "TIMESTAMP"},
    ],
}


class HttpClient:
    """A light keep-alive client (stdlib), so that load generation stays cheap
    next to the server on a 2-core machine."""

    def __init__(self, port: int, key: str = KEY) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any] | str) -> tuple[int, dict[str, Any]]:
        text = body if isinstance(body, str) else json.dumps(body)
        self.conn.request("POST", path, text, self.headers)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read())

    def close(self) -> None:
        self.conn.close()


def run_threads(target: Callable[[int], None], count: int) -> float:
    """Run ``target(n)`` in ``count`` threads; returns the elapsed seconds."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_s),
        "p50_ms": round(percentile(samples_s, 50) * 1000, 3),
        "p95_ms": round(percentile(samples_s, 95) * 1000, 3),
        "p99_ms": round(percentile(samples_s, 99) * 1000, 3),
    }


class Server:
    """``duckmesh serve`` on a fresh data directory (embedded Postgres).

    With ``split=True`` the roles run as separate processes, the scale-out
    layout of ops/: ``--role api`` (which owns the embedded Postgres) plus
    ``--role coordinator`` and ``--role maintenance`` on the same catalog.
    """

    def __init__(self, *, split: bool = False, **env: str) -> None:
        self.split = split
        self.extra: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="dmb"))
        self.port = free_port()
        self.env = server_env(
            DUCKMESH_DATA_DIR=str(self.dir / "data"),
            DUCKMESH_HTTP_PORT=str(self.port),
            DUCKMESH_BOOTSTRAP_API_KEY=KEY,
            DUCKMESH_LOG_LEVEL="warning",
            DUCKMESH_LOG_FORMAT="json",
        )
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {KEY}"}

    def _spawn(self, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return spawn_serve(role, env, self.dir / f"server-{role}.log")

    def __enter__(self) -> Server:
        self.proc = self._spawn("api" if self.split else "all", self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/v1/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not become ready:\n" + self.log())
        if self.split:
            for role in ("coordinator", "maintenance"):
                env = dict(
                    self.env, DUCKMESH_CATALOG_DSN=self.dsn(), DUCKMESH_HTTP_PORT=str(free_port())
                )
                self.extra.append(self._spawn(role, env))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.extra, self.proc]:
            if proc is not None:
                stop(proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.dir.glob("server-*.log"))
        )

    def rss_mib(self) -> float:
        """Resident memory of the DuckMesh processes, summed, with the children
        of a process group (Postgres, not a child, is not included)."""
        total = 0.0
        for proc in [self.proc, *self.extra]:
            assert proc is not None
            pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
            for pid in pids:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the DuckMesh processes
        and their children (Postgres, not a child, is not included)."""
        total = 0.0
        for proc in [self.proc, *self.extra]:
            assert proc is not None
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def dsn(self) -> str:
        dsn = running_dsn(self.dir / "data")
        assert dsn is not None, "the embedded Postgres is not running"
        return dsn

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=120)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_report(name: str, report: dict[str, Any], out: Path | None = None) -> Path:
    out = out or Path.cwd() / "reports"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    report = {
        "benchmark": name,
        "machine": machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **report,
    }
    path.write_text(json.dumps(report, indent=2))
    print(f"\nreport: {path}")
    return path


def target_line(label: str, value: float, target: float, *, lower_is_better: bool) -> str:
    ok = value <= target if lower_is_better else value >= target
    if ok:
        return f"  {label}: {value:,.2f} (target {target:,.2f}) MET"
    miss = (value / target) if lower_is_better else (target / value if value else float("inf"))
    return f"  {label}: {value:,.2f} (target {target:,.2f}) MISSED by {miss:.2f}x"
