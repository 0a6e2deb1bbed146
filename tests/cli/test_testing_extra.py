"""The server runs without the ``testing`` extra; the harness commands say how to get it.

``pip install -e .`` without extras has no httpx: these tests make ``import
httpx`` (and ``import duckmesh_testing``) fail in a child Python, as they
would there, and run the real commands.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from duckmesh_testing.procs import free_port, server_env
from tests.fixtures import BOOTSTRAP_KEY, REPO

# Run ``duckmesh ARGV...`` with the given modules unimportable (None in sys.modules).
_WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from duckmesh.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _duckmesh_without(blocked: str, *argv: str) -> list[str]:
    return [sys.executable, "-c", _WITHOUT, blocked, *argv]


def _run(blocked: str, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _duckmesh_without(blocked, *argv),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_harness_commands_without_httpx_print_how_to_install_and_exit_2(
    tmp_path: Path,
) -> None:
    env = server_env(DUCKMESH_DATA_DIR=str(tmp_path / "data"))
    recording = tmp_path / "failure.json"
    recording.write_text('{"actions": []}')
    for argv in (["bench", "steady"], ["scenario", "replay", str(recording)]):
        done = _run("httpx", *argv, env=env)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, done.stderr)
        assert "pip install 'duckmesh[testing]'" in lines[0]
        assert "httpx" in lines[0]


def test_every_runtime_module_imports_without_the_testing_package(tmp_path: Path) -> None:
    code = """
import pkgutil, sys
for name in ("httpx", "duckmesh_testing"):
    sys.modules[name] = None
import duckmesh
for mod in pkgutil.walk_packages(duckmesh.__path__, "duckmesh."):
    __import__(mod.name)
print("imported")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=server_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"


def test_serve_answers_without_httpx_and_the_testing_package(tmp_path: Path, dsn: str) -> None:
    port = free_port()
    env = server_env(
        DUCKMESH_DATA_DIR=str(tmp_path / "data"),
        DUCKMESH_CATALOG_DSN=dsn,
        DUCKMESH_HTTP_PORT=str(port),
        DUCKMESH_BOOTSTRAP_API_KEY=BOOTSTRAP_KEY,
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _duckmesh_without("httpx,duckmesh_testing", "serve"),
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/v1/ready", timeout=2).status_code
            except httpx.TransportError:
                status = None
            time.sleep(0.05)
        assert status == 200, log.read_text(errors="replace")
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/tables",
            headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text(errors="replace")
