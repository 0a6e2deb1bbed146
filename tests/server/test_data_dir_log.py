"""``duckmesh serve`` says which data directory it uses, and when it creates a
new catalog there (issue 18): a real process with the embedded Postgres."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import ServerProcess


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: the embedded Postgres's Unix socket lives in it (108-byte limit)."""
    root = Path(tempfile.mkdtemp(prefix="dmdd"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def data_dir_events(log: str) -> list[dict[str, Any]]:
    events = []
    for line in log.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "data_directory":
                events.append(event)
    return events


def test_serve_logs_its_data_directory_and_a_new_catalog(
    spawn_server: Callable[..., ServerProcess], tmp_path: Path, short_dir: Path
) -> None:
    data = short_dir / "fresh"
    srv = spawn_server(DUCKMESH_CATALOG_DSN="", DUCKMESH_DATA_DIR=str(data))
    srv.start()
    assert srv.terminate() == 0
    (first,) = data_dir_events(srv.logs())
    assert (first["path"], first["catalog"], first["level"]) == (str(data), "new", "warning")

    srv.log_path = tmp_path / "second.log"
    srv.start()
    assert srv.terminate() == 0
    (second,) = data_dir_events(srv.logs())
    assert (second["path"], second["catalog"], second["level"]) == (str(data), "existing", "info")
