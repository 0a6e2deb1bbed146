"""Running the ``duckmesh`` command in-process and reading what it printed."""

from __future__ import annotations

import pytest

from duckmesh.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``duckmesh *argv``."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
