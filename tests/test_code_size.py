"""The composition root stays readable: the API package and the runtime keep
every function within 80 lines and every module within 500 (issue 11)."""

from __future__ import annotations

from pathlib import Path

from tools.check_sizes import oversized

ROOT = Path(__file__).resolve().parent.parent


def test_api_and_runtime_stay_small() -> None:
    assert oversized([ROOT / "duckmesh" / "api", ROOT / "duckmesh" / "runtime.py"]) == []
