"""Catalog commands on a data directory whose embedded Postgres a running
``duckmesh serve`` holds: they say which directory they use (one stderr
line), and ``status --json`` reads that server's readiness."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import run
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
