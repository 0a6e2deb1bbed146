"""The ObjectStore contract, written against the protocol only.

Subclass ``ObjectStoreContract`` with a ``store`` fixture for each backend
(local, and S3 on the S3-compatible test server in test_s3.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from duckmesh.storage import ObjectStore
from duckmesh.storage.layout import sha256_file


def scratch_file(store: ObjectStore, data: bytes) -> Path:
    path = store.scratch_dir() / f"upload-{len(data)}-{hash(data) & 0xFFFF}"
    path.write_bytes(data)
    return path


class ObjectStoreContract:
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        raise NotImplementedError

    def test_put_then_read_back(self, store: ObjectStore) -> None:
        info = store.put_file(scratch_file(store, b"parquet bytes"), "t1/tab/a.parquet")
        assert info.key == "t1/tab/a.parquet"
        assert info.size == len(b"parquet bytes")
        assert store.local_path("t1/tab/a.parquet").read_bytes() == b"parquet bytes"
        stat = store.stat("t1/tab/a.parquet")
        assert stat is not None
        assert stat.size == info.size

    def test_put_consumes_the_source(self, store: ObjectStore) -> None:
        source = scratch_file(store, b"x")
        store.put_file(source, "t1/x")
        assert not source.exists()

    def test_missing_object(self, store: ObjectStore) -> None:
        assert store.stat("nope/missing") is None
        assert store.delete("nope/missing") is False

    def test_delete(self, store: ObjectStore) -> None:
        store.put_file(scratch_file(store, b"abc"), "t1/d")
        assert store.delete("t1/d") is True
        assert store.stat("t1/d") is None

    def test_list_by_prefix_skips_scratch(self, store: ObjectStore) -> None:
        for key in ("t1/a/1", "t1/a/2", "t1/b/1", "t2/a/1"):
            store.put_file(scratch_file(store, key.encode()), key)
        scratch_file(store, b"unpublished upload")
        assert sorted(o.key for o in store.list("t1")) == ["t1/a/1", "t1/a/2", "t1/b/1"]
        assert sorted(o.key for o in store.list("")) == ["t1/a/1", "t1/a/2", "t1/b/1", "t2/a/1"]
        assert list(store.list("t9")) == []

    def test_keys_cannot_escape_the_store(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="escapes"):
            store.put_file(scratch_file(store, b"x"), "../outside")
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
        store.put_file(scratch_file(store, b"d"), "t1/tab/x.parquet")
        directory = store.directory("t1")
        assert directory.is_dir()
        assert store.local_path("t1/tab/x.parquet").is_relative_to(directory)
        assert store.directory("t-new").is_dir()  # created when missing

    def test_a_key_is_never_reused(self, store: ObjectStore) -> None:
        store.put_file(scratch_file(store, b"first"), "t1/once")
        with pytest.raises(FileExistsError):
            store.put_file(scratch_file(store, b"second"), "t1/once")
        assert store.local_path("t1/once").read_bytes() == b"first"

    def test_checksum_is_the_recorded_sha256_or_unknown(self, store: ObjectStore) -> None:
        source = scratch_file(store, b"checked")
        digest = sha256_file(source)
        store.put_file(source, "t1/c")
        assert store.checksum("t1/c") in (digest, None)
        assert sha256_file(store.local_path("t1/c")) == digest

    def test_local_paths_resolve_many_keys_in_order(self, store: ObjectStore) -> None:
        keys = [f"t1/m/{i}" for i in range(5)]
        for key in keys:
            store.put_file(scratch_file(store, key.encode()), key)
        paths = store.local_paths([*keys, keys[0]])
        assert [p.read_bytes() for p in paths] == [k.encode() for k in [*keys, keys[0]]]

    def test_a_large_file_round_trips(self, store: ObjectStore) -> None:
        # Past pyarrow's multipart part size on S3 (several parts).
        data = bytes(range(256)) * (48 * 1024 + 7)  # ~12 MiB
        source = scratch_file(store, data)
        digest = sha256_file(source)
        info = store.put_file(source, "t1/big.parquet")
        assert info.size == len(data)
        assert sha256_file(store.local_path("t1/big.parquet")) == digest
