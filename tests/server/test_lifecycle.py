"""``duckmesh serve`` lifecycle as real processes: every stop signal drains and
stops the whole group and its embedded Postgres; a second server on the same
data directory and a port in use are one line and exit status 2."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from duckmesh_testing.procs import free_port, server_env, spawn_serve
from tests.fixtures import REPO


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # The embedded Postgres puts its Unix socket here: keep the path short.
    path = Path(tempfile.mkdtemp(prefix="dml"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(data: Path, port: int, **extra: str) -> dict[str, str]:
    return server_env(
        DUCKMESH_DATA_DIR=str(data),
        DUCKMESH_HTTP_PORT=str(port),
        DUCKMESH_LOG_FORMAT="json",
        **extra,
    )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/v1/ready", timeout=2)
            if r.status_code == 200:
                body: dict[str, object] = r.json()
                return body
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("not ready within 60 s:\n" + log.read_text())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postmaster_pid(data: Path) -> int:
    return int((data / "pg" / "postmaster.pid").read_text().split()[0])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_stop_signal_leaves_no_process_and_no_postgres(
    short_dir: Path, signum: signal.Signals
) -> None:
    port = free_port()
    data = short_dir / "data"
    log = short_dir / "serve.log"
    proc = spawn_serve("all", _env(data, port, DUCKMESH_API_WORKERS="2"), log, cwd=REPO)
    try:
        ready = _wait_ready(proc, port, log)
        processes = ready["processes"]
        assert isinstance(processes, list)
        assert sorted(p["role"] for p in processes) == [
            "all",
            "api",
            "api",
            "coordinator",
            "maintenance",
            "postgres",  # the embedded Postgres, supervised by the root (ADR 0017)
        ]
        pids = [int(p["pid"]) for p in processes] + [_postmaster_pid(data)]
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(signum)
        assert proc.wait(30) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == [], "left running:\n" + log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_second_serve_on_the_same_data_directory_is_refused(short_dir: Path) -> None:
    data = short_dir / "data"
    first_port = free_port()
    log = short_dir / "first.log"
    first = spawn_serve("all", _env(data, first_port, DUCKMESH_API_WORKERS="1"), log, cwd=REPO)
    try:
        _wait_ready(first, first_port, log)
        began = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "duckmesh.cli.main", "serve"],
            env=_env(data, free_port()),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert str(data.resolve()) in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert time.monotonic() - began < 10
        # The first server was not disturbed.
        assert httpx.get(f"http://127.0.0.1:{first_port}/v1/ready", timeout=5).status_code == 200
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0


def test_port_in_use_is_one_line_and_exit_status_2(short_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "duckmesh.cli.main", "serve"],
            env=_env(short_dir / "data", port),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port}" in lines[0]
    assert "in use" in lines[0]
    assert time.monotonic() - began < 10
    assert not (short_dir / "data" / "pg").exists(), "Postgres started before the port was bound"
