"""The package stays readable: every function within 80 lines and every module
within 500 (issue 11; `python tools/check_sizes.py duckmesh` lists offenders)."""

from __future__ import annotations

from pathlib import Path

from tools.check_sizes import oversized

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_stays_small() -> None:
    assert oversized([ROOT / "duckmesh"]) == []
