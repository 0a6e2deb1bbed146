"""The ObjectStore contract, written against the protocol only.

Subclass ``ObjectStoreContract`` with a ``store`` fixture for each backend
(local now; S3-compatible later).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from duckmesh.storage import ObjectStore


def _scratch_file(store: ObjectStore, data: bytes) -> Path:
    path = store.scratch_dir() / f"upload-{len(data)}-{hash(data) & 0xFFFF}"
    path.write_bytes(data)
    return path


class ObjectStoreContract:
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        raise NotImplementedError

    def test_put_then_read_back(self, store: ObjectStore) -> None:
        info = store.put_file(_scratch_file(store, b"parquet bytes"), "t1/tab/a.parquet")
        assert info.key == "t1/tab/a.parquet"
        assert info.size == len(b"parquet bytes")
        assert store.local_path("t1/tab/a.parquet").read_bytes() == b"parquet bytes"
        stat = store.stat("t1/tab/a.parquet")
        assert stat is not None
        assert stat.size == info.size

    def test_put_consumes_the_source(self, store: ObjectStore) -> None:
        source = _scratch_file(store, b"x")
        store.put_file(source, "t1/x")
        assert not source.exists()

    def test_missing_object(self, store: ObjectStore) -> None:
        assert store.stat("nope/missing") is None
        assert store.delete("nope/missing") is False

    def test_delete(self, store: ObjectStore) -> None:
        store.put_file(_scratch_file(store, b"abc"), "t1/d")
        assert store.delete("t1/d") is True
        assert store.stat("t1/d") is None

    def test_list_by_prefix_skips_scratch(self, store: ObjectStore) -> None:
        for key in ("t1/a/1", "t1/a/2", "t1/b/1", "t2/a/1"):
            store.put_file(_scratch_file(store, key.encode()), key)
        _scratch_file(store, b"unpublished upload")
        assert sorted(o.key for o in store.list("t1")) == ["t1/a/1", "t1/a/2", "t1/b/1"]
        assert sorted(o.key for o in store.list("")) == ["t1/a/1", "t1/a/2", "t1/b/1", "t2/a/1"]
        assert list(store.list("t9")) == []

    def test_keys_cannot_escape_the_store(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="escapes"):
            store.put_file(_scratch_file(store, b"x"), "../outside")
        with pytest.raises(ValueError, match="escapes"):
            store.local_path("t1/../../etc/passwd")

    def test_check_writable(self, store: ObjectStore) -> None:
        store.check_writable()

    def test_scratch_paths_are_new_and_publishable(self, store: ObjectStore) -> None:
        first, second = store.scratch_path(".parquet"), store.scratch_path(".parquet")
        assert first != second
        assert first.suffix == ".parquet"
        assert not first.exists()
        first.write_bytes(b"written before publishing")
        assert list(store.list("")) == []  # scratch files are never listed
        store.put_file(first, "t1/s.parquet")
        assert store.local_path("t1/s.parquet").read_bytes() == b"written before publishing"

    def test_directory_holds_the_prefix_objects(self, store: ObjectStore) -> None:
        store.put_file(_scratch_file(store, b"d"), "t1/tab/x.parquet")
        directory = store.directory("t1")
        assert directory.is_dir()
        assert store.local_path("t1/tab/x.parquet").is_relative_to(directory)
        assert store.directory("t-new").is_dir()  # created when missing
