"""Commands on a data directory with an embedded Postgres (real processes):
catalog commands say which directory they use (one stderr line), ``status
--json`` reads the server's readiness, and ``duckmesh demo`` runs its own
server there."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from duckmesh_testing.procs import free_port, server_env
from tests.api.helpers import bearer
from tests.cli.helpers import run
from tests.cli.test_demo import printed_queries
from tests.fixtures import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: the embedded Postgres's Unix socket lives in it (108-byte limit)."""
    root = Path(tempfile.mkdtemp(prefix="dmcli"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_catalog_commands_name_their_data_directory_and_status_json(
    spawn_server: Callable[..., ServerProcess],
    short_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = short_dir / "data"
    srv = spawn_server(DUCKMESH_CATALOG_DSN="", DUCKMESH_DATA_DIR=str(data))
    srv.start()
    try:
        code, out, err = run(capsys, "tenants", "list", "--json", "--data-dir", str(data))
        assert code == 0, err
        assert err == f"duckmesh: data directory '{data}'\n"
        assert [t["tenant_id"] for t in json.loads(out)] == ["default"]

        monkeypatch.setenv("DUCKMESH_HTTP_PORT", str(srv.port))
        code, out, err = run(capsys, "status", "--json")
        assert (code, err) == (0, "")
        status = json.loads(out)
        assert status["status"] == "ready"
        assert {"checks", "actors"} <= set(status)
    finally:
        assert srv.terminate() == 0


def test_demo_starts_its_own_server_on_the_data_directory(short_dir: Path, tmp_path: Path) -> None:
    """``duckmesh demo --data-dir D``: serve (a process group) on D, a key of
    its own, the dataset, queries that answer; SIGTERM stops both."""
    data = short_dir / "data"
    port = free_port()
    env = server_env(DUCKMESH_HTTP_PORT=str(port), DUCKMESH_LOG_FORMAT="json")
    argv = [sys.executable, "-m", "duckmesh.cli.main", "demo", "--rows", "500"]
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(data)],
        env=env,
        cwd=tmp_path,  # a data directory taken from the cwd would show up here
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _read_until(proc, "the server keeps running", timeout=180)
        key = next(line for line in lines if "API key for the demo: " in line).split(": ")[-1]
        base = f"http://127.0.0.1:{port}"
        for body in printed_queries("\n".join(lines)):
            r = httpx.post(f"{base}/v1/query", json=body, headers=bearer(key), timeout=30)
            assert r.status_code == 200, r.text
        assert (data / "pg").is_dir()
        assert not (tmp_path / "duckmesh-data").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.splitlines()[0] == f"duckmesh: data directory '{data}' (creating a new catalog)"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """stdout lines up to the one containing ``marker`` (a reader thread: the
    deadline holds even when the process prints nothing)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert line is not None, f"demo exited {proc.poll()}: {seen}"
        seen.append(line)
        if marker in line:
            return seen
