"""Running the ``duckmesh`` command in-process and reading what it printed;
the data files a table's latest snapshot lists."""

from __future__ import annotations

import pytest
import trio

from duckmesh.cli.main import main
from tests import fixtures
from tests.fixtures import LiveServer


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``duckmesh *argv``."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def run_in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``run`` off the Trio thread, so the test's live server keeps answering."""
    return await trio.to_thread.run_sync(lambda: run(capsys, *argv))


def table_paths(server: LiveServer, table_name: str) -> list[str]:
    """Sorted object keys of the files the latest snapshot lists for a table."""
    return fixtures.table_paths(server.rt, table_name)
