"""The local file system backend against the ObjectStore contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from duckmesh.storage import LocalObjectStore, ObjectStore
from tests.storage.contract import ObjectStoreContract


class TestLocalObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        return LocalObjectStore(tmp_path / "objects")
