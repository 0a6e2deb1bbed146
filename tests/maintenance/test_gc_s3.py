"""GC and integrity against an S3 bucket (the S3-compatible test server):
unreferenced files and orphans go (their cached copies too), never a file of
the latest or a pinned snapshot; checksums come from the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duckmesh.catalog import commands, reads
from duckmesh.config import Config
from duckmesh.maintenance.actors import compactor_for
from duckmesh.maintenance.gc import Collector, RetentionSettings
from duckmesh.maintenance.integrity import IntegrityChecker
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, build_runtime, migrate_and_bootstrap
from duckmesh.storage.s3 import S3ObjectStore
from duckmesh_testing.s3server import S3TestServer
from tests.maintenance.test_compaction import log_with_commits


@pytest.fixture
def s3_runtime(
    make_config: Callable[..., Config],
    dsn: str,
    s3_server: S3TestServer,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Runtime]:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    config = make_config(
        object_store_url=f"s3://{s3_bucket}/dm",
        s3_endpoint_url=s3_server.endpoint,
        s3_region="us-east-1",
    )
    rt = build_runtime(config, dsn=dsn)
    migrate_and_bootstrap(rt)
    try:
        yield rt
    finally:
        rt.close()


def _collector(rt: Runtime, **kw: Any) -> Collector:
    settings: dict[str, Any] = {"retain_count": 1, "retain_s": 0.0, "safety_window_s": 0.0}
    settings.update(kw)
    return Collector(rt.db, rt.store, RetentionSettings(**settings))


def _store(rt: Runtime) -> S3ObjectStore:
    assert isinstance(rt.store, S3ObjectStore)
    return rt.store


def _bucket(rt: Runtime) -> set[str]:
    return {o.key for o in rt.store.list("default")}


def _head(rt: Runtime) -> int:
    head = rt.db.call(lambda c: reads.latest_snapshot(c, "default"))
    assert head is not None
    return head.snapshot_id


def _live(rt: Runtime) -> set[str]:
    sid = _head(rt)

    def files(c: Any) -> set[str]:
        return {f.path for f in reads.snapshot_files(c, "default", sid)}

    live: set[str] = rt.db.call(files)
    return live


async def test_gc_on_s3_deletes_unreferenced_files_and_their_cached_copies(
    s3_runtime: Runtime,
) -> None:
    rt, store = s3_runtime, _store(s3_runtime)
    log_with_commits(rt, 8, "k")
    small = _bucket(rt)
    assert all(store.cache.contains(k) for k in small)  # written into the cache
    pinned = _head(rt)
    rt.db.call(lambda c: commands.pin_snapshot(c, "default", pinned, True, "audit"))
    assert compactor_for(rt).compact("default").files_merged == 8
    # The pinned snapshot still lists the small files: nothing goes.
    assert _collector(rt).retain("default").files_deleted == 0
    assert small <= _bucket(rt)
    rt.db.call(lambda c: commands.pin_snapshot(c, "default", pinned, False, ""))
    assert _collector(rt).retain("default").files_deleted == 8
    assert _bucket(rt) == _live(rt)
    assert not any(store.cache.contains(k) or store.cache.path(k).exists() for k in small)
    result = await rt.queries.execute("default", QueryRequest(sql="select count(*) from log"))
    assert result["rows"] == [[8]]


def test_orphans_on_s3_go_after_the_window_and_live_files_never(s3_runtime: Runtime) -> None:
    rt, store = s3_runtime, _store(s3_runtime)
    log_with_commits(rt, 2, "o")
    orphan = "default/t-1/date=2026-11-26/hour=10/part-orphan.parquet"
    scratch = store.scratch_path(".parquet")
    scratch.write_bytes(b"written by a commit that crashed before publishing")
    store.put_file(scratch, orphan)
    assert _collector(rt, safety_window_s=3600.0).retain("default").orphans_deleted == 0
    assert orphan in _bucket(rt)
    assert _collector(rt).retain("default").orphans_deleted == 1
    assert _bucket(rt) == _live(rt)
    assert not store.cache.contains(orphan)


def test_integrity_on_s3_uses_the_recorded_checksum_and_sees_a_replaced_object(
    s3_runtime: Runtime, s3_server: S3TestServer, s3_bucket: str, tmp_path: Path
) -> None:
    rt, store = s3_runtime, _store(s3_runtime)
    log_with_commits(rt, 2, "i")
    checker = IntegrityChecker(rt.db, rt.store)
    before = s3_server.object_reads(s3_bucket)
    assert checker.verify("default").ok
    assert s3_server.object_reads(s3_bucket) == before  # HEADs only, no download
    # Replace one object behind DuckMesh's back (same size, no recorded checksum).
    victim = sorted(_live(rt))[0]
    original = store.local_path(victim).read_bytes()
    with store.fs.open_output_stream(f"{store.base}/{victim}") as out:
        out.write(bytes(len(original)))
    report = checker.verify("default")
    assert report.checksum_mismatch == [victim]
    assert store.local_path(victim).read_bytes() == original  # the cache is not the check
