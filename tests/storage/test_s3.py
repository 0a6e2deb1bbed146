"""The S3 backend against the ObjectStore contract, on the S3-compatible test
server (moto), plus what only a remote store has: the recorded checksum read
without a download, the cache, and a clear error when the store is down."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from duckmesh.config import Config
from duckmesh.storage import ObjectStore
from duckmesh.storage.factory import open_object_store
from duckmesh.storage.layout import sha256_file
from duckmesh.storage.protocol import ObjectStoreUnavailable
from duckmesh.storage.s3 import S3ObjectStore
from duckmesh_testing.s3server import S3TestServer
from tests.storage.contract import ObjectStoreContract, scratch_file


@pytest.fixture(autouse=True)
def aws_credentials(s3_server: S3TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


def s3_store(
    server: S3TestServer, bucket: str, data_dir: Path, cache_bytes: int = 64 << 20
) -> S3ObjectStore:
    config = Config(
        data_dir=data_dir,
        object_store_url=f"s3://{bucket}/pre/fix",
        s3_endpoint_url=server.endpoint,
        s3_region="us-east-1",
        object_cache_bytes=cache_bytes,
    )
    store = open_object_store(config)
    assert isinstance(store, S3ObjectStore)
    return store


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path, s3_server: S3TestServer, s3_bucket: str) -> ObjectStore:
        return s3_store(s3_server, s3_bucket, tmp_path)


def test_checksum_is_read_back_without_download(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    store = s3_store(s3_server, s3_bucket, tmp_path)
    source = scratch_file(store, b"some parquet bytes")
    digest = sha256_file(source)
    store.put_file(source, "t1/tab/f.parquet")
    reads = s3_server.object_reads(s3_bucket)
    assert store.checksum("t1/tab/f.parquet") == digest
    assert s3_server.object_reads(s3_bucket) == reads  # a HEAD, not a GET
    assert store.checksum("t1/tab/missing") is None


def test_a_fresh_store_downloads_once_into_its_cache(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    writer = s3_store(s3_server, s3_bucket, tmp_path / "writer")
    writer.put_file(scratch_file(writer, b"a" * 1000), "t1/x/a")
    reader = s3_store(s3_server, s3_bucket, tmp_path / "reader")
    before = s3_server.object_reads(s3_bucket)
    paths = reader.local_paths(["t1/x/a", "t1/x/a"])
    assert paths[0].read_bytes() == b"a" * 1000
    assert paths[0].is_relative_to(tmp_path / "reader" / "cache")
    assert reader.local_path("t1/x/a") == paths[0]
    assert s3_server.object_reads(s3_bucket) == before + 1
    reader.delete("t1/x/a")  # the cached copy goes with the object
    assert not paths[0].exists()


def test_the_cache_stays_within_its_byte_bound(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    writer = s3_store(s3_server, s3_bucket, tmp_path / "writer")
    for i in range(8):
        writer.put_file(scratch_file(writer, bytes([i]) * 400), f"t1/x/{i}")
    reader = s3_store(s3_server, s3_bucket, tmp_path / "reader", cache_bytes=1000)
    for i in [*range(8), 7, 6]:
        assert reader.local_path(f"t1/x/{i}").read_bytes() == bytes([i]) * 400
        stats = reader.cache.statistics()
        on_disk = sum(p.stat().st_size for p in reader.cache.root.rglob("*") if p.is_file())
        assert stats.bytes == on_disk <= 1000
    assert reader.cache.contains("t1/x/6")
    assert reader.cache.contains("t1/x/7")


def test_a_store_that_is_down_answers_a_retryable_error(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    store = s3_store(s3_server, s3_bucket, tmp_path)
    store.fs = store.probe  # one attempt per call: the SDK's retries only make this slower
    s3_server.relay.down()
    try:
        with pytest.raises(ObjectStoreUnavailable) as caught:
            store.put_file(scratch_file(store, b"x"), "t1/down")
        assert caught.value.error_code == "OBJECT_STORE_UNAVAILABLE"
        assert caught.value.retryable
        with pytest.raises(ObjectStoreUnavailable):
            store.check_writable()
    finally:
        s3_server.relay.up()
    source = scratch_file(store, b"x")
    store.put_file(source, "t1/down")  # nothing was half-written
    assert store.local_path("t1/down").read_bytes() == b"x"


def test_a_large_file_goes_up_in_parts(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    store = s3_store(s3_server, s3_bucket, tmp_path)
    store.put_file(scratch_file(store, b"\x01" * (24 << 20)), "t1/huge.parquet")
    log = s3_server.log_path.read_text(errors="replace")
    parts = set(re.findall(rf"PUT /{s3_bucket}/pre/fix/t1/huge\.parquet\?partNumber=(\d+)", log))
    assert len(parts) >= 2, parts
    info = store.stat("t1/huge.parquet")
    assert info is not None
    assert info.size == 24 << 20


def test_concurrent_readers_share_one_download(
    tmp_path: Path, s3_server: S3TestServer, s3_bucket: str
) -> None:
    writer = s3_store(s3_server, s3_bucket, tmp_path / "writer")
    writer.put_file(scratch_file(writer, b"z" * (2 << 20)), "t1/shared")
    reader = s3_store(s3_server, s3_bucket, tmp_path / "reader")
    before = s3_server.object_reads(s3_bucket)
    start = threading.Barrier(8)

    def read(_: int) -> Path:
        start.wait()
        return reader.local_path("t1/shared")

    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(read, range(8)))
    assert len(paths) == 1
    assert paths.pop().read_bytes() == b"z" * (2 << 20)
    deadline = time.monotonic() + 5
    while s3_server.object_reads(s3_bucket) == before and time.monotonic() < deadline:
        time.sleep(0.05)  # the server logs a request just after answering it
    time.sleep(0.3)
    assert s3_server.object_reads(s3_bucket) == before + 1
