"""TLS (issue 14): with DUCKMESH_TLS_CERT_FILE/KEY_FILE a real ``duckmesh
serve`` answers HTTPS only; the two settings come together and must be
readable, or the configuration is refused with one line."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from duckmesh.config import ConfigError, load_config
from tests.fixtures import BOOTSTRAP_KEY, REPO, ServerProcess


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 and its key (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        *("openssl", "req", "-x509", "-nodes", "-days", "1"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-keyout", str(key), "-out", str(cert)),
        *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
    ]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _wait_https(srv: ServerProcess, context: ssl.SSLContext, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert srv.proc is not None
        if srv.proc.poll() is not None:
            raise AssertionError(f"server exited {srv.proc.returncode}:\n{srv.logs()}")
        try:
            if httpx.get(f"https://127.0.0.1:{srv.port}/v1/ready", verify=context).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready over HTTPS in {timeout}s:\n{srv.logs()}")


@pytest.mark.slow
def test_https_with_the_certificate_and_no_plain_http(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    srv = spawn_server(DUCKMESH_TLS_CERT_FILE=str(cert), DUCKMESH_TLS_KEY_FILE=str(key))
    srv.start(wait=False)
    context = ssl.create_default_context(cafile=str(cert))
    _wait_https(srv, context)
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    r = httpx.get(f"https://127.0.0.1:{srv.port}/v1/tables", headers=headers, verify=context)
    assert r.status_code == 200, r.text
    with pytest.raises(httpx.TransportError):  # not TLS: the handshake never happens
        httpx.get(f"http://127.0.0.1:{srv.port}/v1/health", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{srv.port}/v1/health")  # unknown CA: refused
    assert srv.terminate() == 0
    assert ("running as root" in srv.logs()) is (os.geteuid() == 0)


def test_cert_and_key_come_together(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert load_config({"DUCKMESH_TLS_CERT_FILE": str(cert), "DUCKMESH_TLS_KEY_FILE": str(key)})
    with pytest.raises(ConfigError, match="must be set together"):
        load_config({"DUCKMESH_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match="must be set together"):
        load_config({"DUCKMESH_TLS_KEY_FILE": str(key)})
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"DUCKMESH_TLS_KEY_FILE=.*cannot be read"):
        load_config({"DUCKMESH_TLS_CERT_FILE": str(cert), "DUCKMESH_TLS_KEY_FILE": missing})


def test_serve_refuses_an_unreadable_certificate_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCKMESH_")}
    env.update(
        DUCKMESH_DATA_DIR=str(tmp_path / "data"),
        DUCKMESH_TLS_CERT_FILE=str(tmp_path / "missing-cert.pem"),
        DUCKMESH_TLS_KEY_FILE=str(tmp_path / "missing-key.pem"),
    )
    out = subprocess.run(
        [sys.executable, "-m", "duckmesh.cli.main", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "DUCKMESH_TLS_CERT_FILE" in lines[0]
    assert "cannot be read" in lines[0]
