"""Running the ``duckmesh`` command in-process and reading what it printed;
the data files a table's latest snapshot lists."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from duckmesh.catalog import reads
from duckmesh.cli.main import main
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
    """Sorted object keys of the files the latest snapshot lists for a table
    of tenant ``default``."""

    def paths(c: Any) -> list[str]:
        head = reads.latest_snapshot(c, "default")
        table = reads.get_table(c, "default", table_name)
        assert head is not None
        assert table is not None
        files = reads.snapshot_files(c, "default", head.snapshot_id)
        return sorted(f.path for f in files if f.table_id == table.table_id)

    return server.rt.db.call(paths, transaction=False)
