"""Fixtures of the in-process CLI tests (``main(argv)``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DUCKMESH_* from the outside; data under tmp_path."""
    for name in list(os.environ):
        if name.startswith("DUCKMESH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DUCKMESH_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def catalog(clean_env: None, monkeypatch: pytest.MonkeyPatch, dsn: str) -> str:
    """The test catalog, set after ``clean_env`` cleared the environment."""
    monkeypatch.setenv("DUCKMESH_CATALOG_DSN", dsn)
    return dsn
