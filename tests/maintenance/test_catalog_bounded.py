"""The bounded catalog: rows of expired snapshots and collected files are
pruned by an event, and a checkpoint archives old events to Parquet while
replay (from the checkpoint) still proves the projections."""

from __future__ import annotations

from typing import Any

from duckmesh.catalog import reads
from duckmesh.maintenance import checkpoint
from duckmesh.maintenance.actors import compactor_for
from duckmesh.maintenance.gc import Collector, RetentionSettings
from duckmesh.projections import replay
from duckmesh.projections.archive import ARCHIVED_TYPES
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime
from tests.maintenance.test_compaction import _ingest_commits, log_with_commits


def _count(rt: Runtime, sql: str, *args: Any) -> int:
    row = rt.db.call(lambda c: c.execute(sql, args).fetchone(), transaction=False)
    assert row is not None
    return int(row[0])


def _collector(rt: Runtime) -> Collector:
    settings = RetentionSettings(retain_count=1, retain_s=0.0, safety_window_s=0.0)
    return Collector(rt.db, rt.store, settings)


def _verified(rt: Runtime) -> bool:
    return all(d.equal for d in rt.db.call(replay.verify, transaction=False))


async def _total(rt: Runtime) -> Any:
    result = await rt.queries.execute("default", QueryRequest(sql="select count(*) from log"))
    return result["rows"]


async def test_expired_snapshots_and_collected_files_are_pruned(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 8, "k")
    assert compactor_for(rt).compact("default").files_merged == 8
    snapshots_before = _count(rt, "SELECT count(*) FROM snapshot")
    assert _count(rt, "SELECT count(*) FROM data_file") == 9
    summary = _collector(rt).retain("default")
    assert summary.files_deleted == 8
    # Only the latest snapshot and the merged file are left in the catalog.
    assert _count(rt, "SELECT count(*) FROM snapshot") == 1 < snapshots_before
    assert _count(rt, "SELECT count(*) FROM data_file") == 1
    assert _count(rt, "SELECT count(*) FROM snapshot_table_watermark WHERE snapshot_id < 10") == 0
    assert _verified(rt)
    assert await _total(rt) == [[8]]
    # Nothing left to prune: no further event.
    events = _count(rt, "SELECT count(*) FROM event_log")
    _collector(rt).retain("default")
    assert _count(rt, "SELECT count(*) FROM event_log") == events


async def test_checkpoint_archives_events_and_replay_starts_from_it(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 6, "a")
    assert checkpoint.take(rt.db, rt.store, min_events=10_000) is None  # not enough yet
    first = checkpoint.take(rt.db, rt.store, min_events=1)
    assert first is not None
    assert first.events_archived >= 6  # at least the six commits' snapshots
    assert first.archive_key is not None
    bulk = "SELECT count(*) FROM event_log WHERE event_type = ANY(%s)"
    assert _count(rt, bulk, list(ARCHIVED_TYPES)) == 0
    archived = checkpoint.read_archive(rt.store, first.archive_key)
    assert [e["position"] for e in archived] == sorted(e["position"] for e in archived)
    published = [e for e in archived if e["event_type"] == "SnapshotPublished"]
    assert [e["payload"]["snapshot_id"] for e in published] == list(range(1, len(published) + 1))
    # The administrative history stays in the log (the audit trail reads it).
    assert _count(rt, "SELECT count(*) FROM event_log WHERE event_type = 'TableCreated'") == 1
    assert _verified(rt)

    # More writes after the checkpoint: replay = checkpoint + the newer events.
    _ingest_commits(
        rt, "log", [[{"idempotency_key": f"b{i}", "payload": {"id": i}}] for i in range(3)]
    )
    assert _verified(rt)
    assert await _total(rt) == [[9]]
    second = checkpoint.take(rt.db, rt.store, min_events=1)
    assert second is not None
    assert second.position > first.position
    assert second.events_applied < first.events_applied + 10  # only the new events replayed
    assert second.archive_key != first.archive_key
    assert {
        e["position"] for e in checkpoint.read_archive(rt.store, second.archive_key or "")
    }.isdisjoint(e["position"] for e in archived)
    assert _verified(rt)
    # Rebuild from the checkpoint gives the same catalog and answers.
    rt.db.call(replay.rebuild, transaction=False)
    assert _verified(rt)
    head = rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    assert head is not None
    assert head.snapshot_id == 10
    assert await _total(rt) == [[9]]
