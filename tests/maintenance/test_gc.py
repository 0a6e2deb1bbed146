"""Snapshot expiry and file GC: nothing a live or pinned snapshot needs is
ever deleted; what nothing needs goes after the safety window."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from duckmesh.catalog import commands, reads
from duckmesh.errors import DuckMeshError
from duckmesh.maintenance.actors import compactor_for
from duckmesh.maintenance.gc import Collector, RetentionSettings
from duckmesh.maintenance.results import RetentionSummary
from duckmesh.projections import replay
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime
from tests.fixtures import LiveServer
from tests.maintenance.test_compaction import KV_TABLE, LOG_TABLE, log_with_commits


def _collector(rt: Runtime, **kw: Any) -> Collector:
    settings: dict[str, Any] = {"retain_count": 2, "retain_s": 0.0, "safety_window_s": 0.0}
    settings.update(kw)
    return Collector(rt.db, rt.store, RetentionSettings(**settings))


def _objects(rt: Runtime) -> set[str]:
    return {o.key for o in rt.store.list("default")}


async def test_expiry_keeps_latest_newest_and_pinned(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 6, "k")
    snaps = rt.db.call(lambda c: reads.list_snapshots(c, "default", None, 100))
    ids = sorted(s.snapshot_id for s in snaps)
    pinned = ids[1]
    rt.db.call(lambda c: commands.pin_snapshot(c, "default", pinned, True, "audit"))
    # Nothing is old enough yet: the age rule keeps everything.
    assert _collector(rt, retain_s=3600.0).retain("default").snapshots_expired == 0
    summary = _collector(rt).retain("default")
    after = {
        s.snapshot_id: s.expired
        for s in rt.db.call(lambda c: reads.list_snapshots(c, "default", None, 100))
    }
    kept = {i for i, expired in after.items() if not expired}
    assert kept == {pinned, ids[-1], ids[-2]}
    assert summary.snapshots_expired == len(ids) - 3
    old = await rt.queries.execute(
        "default", QueryRequest(sql="select count(*) from log", snapshot_id=pinned)
    )
    assert old["snapshot_id"] == pinned
    # Expired snapshots are also pruned from the catalog (CatalogPruned).
    gone = min(set(ids) - kept)
    with pytest.raises(DuckMeshError) as refused:
        await rt.queries.execute("default", QueryRequest(sql="select 1", snapshot_id=gone))
    assert refused.value.error_code == "SNAPSHOT_NOT_FOUND"


async def test_gc_deletes_only_unreferenced_files_after_compaction(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 8, "k")
    before = _objects(rt)
    assert compactor_for(rt).compact("default").files_merged == 8
    # The pre-compaction snapshots still list the small files: nothing goes.
    assert _collector(rt, retain_count=1000).retain("default").files_deleted == 0
    assert before <= _objects(rt)
    # Once those snapshots expire the small files are collected, the merged one stays.
    summary = _collector(rt, retain_count=1).retain("default")
    assert summary.files_deleted == 8
    remaining = _objects(rt)
    assert not (before & remaining)
    assert len(remaining) == 1
    result = await rt.queries.execute("default", QueryRequest(sql="select count(*) from log"))
    assert result["rows"] == [[8]]
    # Idempotent: a second run finds nothing; projections still equal the log.
    assert _collector(rt, retain_count=1).retain("default") == RetentionSummary(
        files_retired=0,
        snapshots_expired=0,
        files_deleted=0,
        orphans_deleted=0,
        bus_records_deleted=0,
    )
    assert all(d.equal for d in rt.db.call(replay.verify, transaction=False))


async def test_a_snapshot_that_expires_while_it_is_asked_for_is_refused_not_short(
    runtime: Runtime,
) -> None:
    """A query resolves its snapshot, then loads the snapshot's files: expiry
    and GC may come in between (or the lookup was cached). The files of an
    expired snapshot are collected, so its list would be short; the load must
    answer SNAPSHOT_NOT_FOUND, never rows of a partial list (the scenario
    runner's long run found an empty answer here)."""
    rt = runtime
    log_with_commits(rt, 8, "k")
    old = rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    assert old is not None
    first = await rt.queries.execute(
        "default", QueryRequest(sql="select count(*) from log", snapshot_id=old.snapshot_id)
    )
    assert first["rows"] == [[8]]
    assert compactor_for(rt).compact("default").files_merged == 8
    assert _collector(rt, retain_count=1).retain("default").files_deleted == 8
    # The lookup is still cached as unexpired (no notification reaches this
    # runtime) and the loaded schema names files GC deleted: the query
    # reloads the snapshot, which must find it expired (other SQL: the same
    # would be answered by the result cache, rightly).
    with pytest.raises(DuckMeshError) as refused:
        await rt.queries.execute(
            "default", QueryRequest(sql="select sum(1) from log", snapshot_id=old.snapshot_id)
        )
    assert refused.value.error_code == "SNAPSHOT_NOT_FOUND"


def test_orphans_wait_for_the_safety_window(runtime: Runtime) -> None:
    rt = runtime
    scratch = rt.store.scratch_path(".parquet")
    scratch.write_bytes(b"written by a commit that crashed before publishing")
    rt.store.put_file(scratch, "default/t-1/date=2026-11-26/hour=10/part-orphan.parquet")
    assert _collector(rt, safety_window_s=3600.0).retain("default").orphans_deleted == 0
    path = rt.store.local_path("default/t-1/date=2026-11-26/hour=10/part-orphan.parquet")
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert _collector(rt, safety_window_s=3600.0).retain("default").orphans_deleted == 1
    assert not path.exists()


async def test_retention_endpoint(server: LiveServer) -> None:
    await server.create_table(LOG_TABLE)
    r = await server.client.post("/v1/retention/run")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    # Defaults keep 24 h and 100 snapshots: nothing expires on a fresh tenant.
    assert body["summary"] == {
        "files_retired": 0,
        "snapshots_expired": 0,
        "files_deleted": 0,
        "orphans_deleted": 0,
        "bus_records_deleted": 0,
    }


async def test_table_retention_drops_old_event_time_from_latest_only(runtime: Runtime) -> None:
    import datetime as dt

    from tests.maintenance.test_compaction import _ingest_commits

    rt = runtime
    rt.db.call(
        lambda c: commands.create_table(
            c,
            "default",
            {
                "name": "events",
                "columns": [{"name": "id", "type": "BIGINT"}],
                "retention": {"max_age_days": 1},
            },
        )
    )
    now = dt.datetime.now(dt.UTC)
    old = (now - dt.timedelta(days=3)).isoformat()
    _ingest_commits(
        rt,
        "events",
        [
            [{"idempotency_key": "old", "payload": {"id": 1}, "event_time": old}],
            [{"idempotency_key": "new", "payload": {"id": 2}, "event_time": now.isoformat()}],
            [{"idempotency_key": "none", "payload": {"id": 3}}],  # no event time: kept
        ],
    )
    before = await rt.queries.execute(
        "default", QueryRequest(sql="select id from events order by 1")
    )
    assert before["rows"] == [[1], [2], [3]]
    summary = _collector(rt, retain_count=1000).retain("default")
    assert summary.files_retired == 1
    after = await rt.queries.execute(
        "default", QueryRequest(sql="select id from events order by 1")
    )
    assert after["rows"] == [[2], [3]]
    assert after["max_visibility_token"] == before["max_visibility_token"]
    # The older snapshot still answers as before (time travel), until it expires.
    again = await rt.queries.execute(
        "default",
        QueryRequest(sql="select id from events order by 1", snapshot_id=before["snapshot_id"]),
    )
    assert again["rows"] == before["rows"]
    assert _collector(rt, retain_count=1000).retain("default").files_retired == 0
    assert all(d.equal for d in rt.db.call(replay.verify, transaction=False))


async def test_keyed_retention_retires_keys_and_never_resurrects_a_version(
    runtime: Runtime,
) -> None:
    """A keyed table retires a key whose current version is past the limit,
    with every older version of it: nothing superseded ever comes back."""
    import datetime as dt

    from tests.maintenance.test_compaction import _ingest_commits

    rt = runtime
    rt.db.call(
        lambda c: commands.create_table(
            c, "default", {**KV_TABLE, "retention": {"max_age_days": 1}}
        )
    )
    now = dt.datetime.now(dt.UTC).isoformat()
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=5)).isoformat()

    def upsert(key: str, k: int, v: str, when: str, op: str = "upsert") -> list[dict[str, Any]]:
        return [{"idempotency_key": key, "op": op, "payload": {"k": k, "v": v}, "event_time": when}]

    _ingest_commits(
        rt,
        "kv",
        [
            # k=1: first a recent version, then a newer one (by token) with an old event time.
            upsert("1a", 1, "superseded", now) + upsert("2a", 2, "kept", now),
            upsert("1b", 1, "current but old", old),
            # k=3: an old version superseded by a recent one: stays, at its current version.
            upsert("3a", 3, "superseded", old),
            upsert("3b", 3, "current", now),
            # k=4: recent version, then an old delete: stays deleted.
            upsert("4a", 4, "superseded", now),
            [{"idempotency_key": "4b", "op": "delete", "payload": {"k": 4}, "event_time": old}],
        ],
    )
    sql = "select k, v from kv order by k"
    before = await rt.queries.execute("default", QueryRequest(sql=sql))
    assert before["rows"] == [[1, "current but old"], [2, "kept"], [3, "current"]]
    summary = _collector(rt, retain_count=1000).retain("default")
    # Old files: k=1's, k=3's first and k=4's delete; the file with k=1, 2 and
    # the one with k=4's first version hold retired keys' rows: rewritten.
    assert summary.files_retired == 5
    after = await rt.queries.execute("default", QueryRequest(sql=sql))
    assert after["rows"] == [[2, "kept"], [3, "current"]]  # no "superseded" anywhere
    assert after["max_visibility_token"] == before["max_visibility_token"]
    raw = await rt.queries.execute(
        "default", QueryRequest(sql="select count(*) from kv where v = 'superseded'")
    )
    assert raw["rows"] == [[0]]
    # Idempotent; compaction afterwards changes nothing either.
    assert _collector(rt, retain_count=1000).retain("default").files_retired == 0
    compactor_for(rt).compact("default")
    assert (await rt.queries.execute("default", QueryRequest(sql=sql)))["rows"] == after["rows"]
    # Time travel to before retention still answers as before.
    again = await rt.queries.execute(
        "default", QueryRequest(sql=sql, snapshot_id=before["snapshot_id"])
    )
    assert again["rows"] == before["rows"]
    assert all(d.equal for d in rt.db.call(replay.verify, transaction=False))


def test_stale_scratch_files_are_swept_after_the_safety_window(runtime: Runtime) -> None:
    rt = runtime
    stale = rt.store.scratch_path(".parquet")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"PAR1 half a file from a commit killed mid-write")
    fresh = rt.store.scratch_path(".parquet")
    fresh.write_bytes(b"a commit writing right now")
    collector = _collector(rt, safety_window_s=3600.0)
    assert collector.retain("default").orphans_deleted == 0
    assert stale.exists()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert collector.retain("default").orphans_deleted == 1
    assert not stale.exists()
    assert fresh.exists()  # younger than the window: a live writer's file stays
