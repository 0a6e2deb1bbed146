"""``duckmesh serve`` child processes for tests, scenarios and benchmarks.

The one place that picks a free port, builds a server's environment and
starts or stops a ``python -m duckmesh.cli.main serve`` process, so the test
fixtures, the scenario system and the benchmark server start servers alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_env(base: Mapping[str, str] | None = None, /, **settings: str) -> dict[str, str]:
    """``base`` (default: this process's environment) without any ``DUCKMESH_*``
    variable, plus ``settings``: a child sees only the settings it is given."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("DUCKMESH_")}
    env.update(settings)
    return env


def spawn_serve(
    role: str | None, env: Mapping[str, str], log_path: Path, *, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``duckmesh serve --role ROLE`` (``None``: plain ``duckmesh serve``, the
    default process group) with stdout and stderr appended to ``log_path``."""
    role_args = [] if role is None else ["--role", role]
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "duckmesh.cli.main", "serve", *role_args],
            env=dict(env),
            stdout=log,
            stderr=log,
            cwd=cwd,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """SIGTERM and wait; SIGKILL if it does not stop in time (then None)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
        return None
