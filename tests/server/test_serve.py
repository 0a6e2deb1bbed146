"""``duckmesh serve`` as a real process: start, restart of a failing actor,
clean shutdown, restart on the same data directory, bad configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from duckmesh.logs import BOOTSTRAP_KEY_EVENT
from duckmesh_testing.procs import free_port
from tests.fixtures import BOOTSTRAP_KEY, EVENTS, REPO, ServerProcess


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _metric(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_failing_coordinator_restarts_while_api_answers(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    srv = spawn_server(
        DUCKMESH_ENABLE_FAULTS="1", DUCKMESH_FAULTS="coordinator.before_claim=raise:2"
    )
    srv.start()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    with httpx.Client(base_url=srv.base_url, headers=headers, timeout=30) as client:
        assert client.post("/v1/tables", json=EVENTS).status_code == 201
        r = client.post(
            "/v1/ingest/events",
            json={
                "records": [{"idempotency_key": "a", "payload": {"id": 1}}],
                "wait_for_visibility": True,
                "visibility_timeout_ms": 20_000,
            },
        )
        # Two claims failed at the fault point: a failure outside any one tenant's
        # commit still crashes the actor (a commit failure backs the tenant off
        # instead, tests/coordinator/test_poison.py); the restarted actor published.
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "visible"
        ready = client.get("/v1/ready").json()
        coordinator = next(a for a in ready["actors"] if a["name"] == "coordinator-0")
        assert coordinator["restarts"] == 2
        assert coordinator["state"] == "running"
        assert "FaultInjected" in coordinator["last_error"]
        metrics = client.get("/v1/metrics").text
        assert _metric(metrics, "duckmesh_actor_restarts_total", 'actor="coordinator-0"') == 2
        assert _metric(metrics, "duckmesh_actor_up", 'actor="coordinator-0"') == 1
        assert client.get("/v1/health").status_code == 200
    assert srv.terminate() == 0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The embedded Postgres puts its Unix socket here: keep the path short.
    path = Path(tempfile.mkdtemp(prefix="dms"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _postgres_running(data_dir: Path) -> bool:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(str(data_dir) in part for part in cmd) and "postgres" in " ".join(cmd):
            return True
    return False


@pytest.mark.slow
def test_embedded_start_sigterm_and_restart(short_dir: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
    env.update(DUCKMESH_DATA_DIR=str(short_dir / "data"), DUCKMESH_HTTP_PORT=str(port))
    base = f"http://127.0.0.1:{port}"

    def start() -> tuple[subprocess.Popen[bytes], Path]:
        log = short_dir / f"serve-{time.monotonic_ns()}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "duckmesh.cli.main", "serve"],
                env=env,
                stdout=fh,
                stderr=fh,
                cwd=REPO,
            )
        started = time.monotonic()
        while time.monotonic() - started < 30:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(base + "/v1/ready", timeout=2).status_code == 200:
                    return proc, log
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("not ready within 30 s:\n" + log.read_text())

    proc, log = start()
    first_log = log.read_text()
    # Not a terminal: the generated key is one JSON event, shown once.
    shown = [e for e in _json_lines(first_log) if e.get("event") == BOOTSTRAP_KEY_EVENT]
    assert len(shown) == 1, first_log
    assert shown[0]["api_key"].startswith("dmk_")
    key = shown[0]["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(base + "/v1/tables", json=EVENTS, headers=headers).status_code == 201
    began = time.monotonic()
    proc.terminate()
    assert proc.wait(10) == 0
    assert time.monotonic() - began < 10
    assert not _postgres_running(short_dir / "data"), "Postgres left running"

    proc, log = start()
    try:
        again = log.read_text()
        assert BOOTSTRAP_KEY_EVENT not in again, "bootstrapped twice"
        assert key not in again
        tables = httpx.get(base + "/v1/tables", headers=headers).json()["tables"]
        assert [t["name"] for t in tables] == ["events"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert not _postgres_running(short_dir / "data")


def test_bad_port_exits_at_once_naming_the_variable() -> None:
    env = dict(os.environ, DUCKMESH_HTTP_PORT="abc")
    began = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "duckmesh.cli.main", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DUCKMESH_HTTP_PORT" in lines[0]
    assert time.monotonic() - began < 10


@pytest.mark.slow
def test_coordinator_process_serves_metrics_and_readiness(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    coordinator = spawn_server()
    coordinator.start(role="coordinator")  # waits for /v1/ready
    with httpx.Client(base_url=coordinator.base_url, timeout=10) as client:
        ready = client.get("/v1/ready").json()
        assert ready["role"] == "coordinator"
        assert {a["name"] for a in ready["actors"]} >= {"commit", "coordinator-0"}
        assert "duckmesh_actor_up" in client.get("/v1/metrics").text
        # Data endpoints are not served by a coordinator process.
        assert client.post("/v1/query", json={"sql": "select 1"}).status_code == 404
    assert coordinator.terminate() == 0
