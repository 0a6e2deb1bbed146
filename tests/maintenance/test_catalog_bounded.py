"""The bounded catalog: rows of expired snapshots and collected files are
pruned by an event, and a checkpoint archives old events to Parquet while
replay (from the checkpoint) still proves the projections."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest

from duckmesh.catalog import commands, reads
from duckmesh.config import ConfigError, load_config
from duckmesh.maintenance import checkpoint
from duckmesh.maintenance.actors import collector_after_pass, collector_for, compactor_for
from duckmesh.maintenance.gc import PRUNED_TABLES, Collector, RetentionSettings
from duckmesh.projections import replay
from duckmesh.projections.archive import ARCHIVED_TYPES
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime
from tests.maintenance.test_compaction import LOG_TABLE, _ingest_commits, log_with_commits


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


def _vacuums(rt: Runtime, table: str) -> int:
    """Manual VACUUMs of ``table`` (autovacuum counts apart)."""
    return _count(rt, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = %s", table)


def _await_vacuumed(rt: Runtime, tables: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 10  # the statistics reach the view asynchronously
    while not all(_vacuums(rt, t) for t in tables):
        assert time.monotonic() < deadline, {t: _vacuums(rt, t) for t in tables}
        time.sleep(0.05)


def test_a_pass_that_pruned_the_catalog_vacuums_the_pruned_tables(runtime: Runtime) -> None:
    """Without it the deleted rows' heap and index pages piled up until
    autovacuum's next turn: the soak's catalog kept growing."""
    rt = runtime
    log_with_commits(rt, 8, "k")
    compactor_for(rt).compact("default")
    collector = _collector(rt)
    after_pass = collector_after_pass(rt, collector)
    assert all(_vacuums(rt, t) == 0 for t in PRUNED_TABLES)
    collector.retain("default")  # prunes 8 files' and their snapshots' rows
    after_pass()
    _await_vacuumed(rt, PRUNED_TABLES)
    assert _count(rt, "SELECT count(*) FROM data_file") == 1
    # A pass that pruned nothing does not vacuum again.
    collector.retain("default")
    assert collector.vacuum_catalog() is False


async def test_checkpoint_holds_only_live_rows_and_lists_the_newest(runtime: Runtime) -> None:
    """The checkpoint is a compact copy (no dead rows of the replay, no
    indexes), the archived log is vacuumed, and catalog_checkpoint keeps the
    newest ``listed`` rows instead of one per checkpoint forever."""
    rt = runtime
    log_with_commits(rt, 8, "c")
    compactor_for(rt).compact("default")
    _collector(rt).retain("default")
    first = checkpoint.take(rt.db, rt.store, min_events=1, listed=2)
    assert first is not None
    assert first.events_archived > 0
    _await_vacuumed(rt, ("event_log",))
    # The replay inserted 9 files and deleted 8: only the live one is kept,
    # packed from the first slot.
    ckpt = "duckmesh_checkpoint.data_file"
    rows = rt.db.call(lambda c: c.execute(f"SELECT ctid::text FROM {ckpt}").fetchall())
    assert rows == [("(0,1)",)]
    assert _count(rt, "SELECT pg_indexes_size(%s::regclass)", ckpt) == 0
    positions = [first.position]
    for i in range(2):
        _ingest_commits(rt, "log", [[{"idempotency_key": f"n{i}", "payload": {"id": 100 + i}}]])
        taken = checkpoint.take(rt.db, rt.store, min_events=1, listed=2)
        assert taken is not None
        positions.append(taken.position)
    listed = rt.db.call(
        lambda c: c.execute("SELECT position FROM catalog_checkpoint ORDER BY 1").fetchall()
    )
    assert [r[0] for r in listed] == positions[-2:]
    assert _verified(rt)  # replay from the compact checkpoint proves the projections
    assert await _total(rt) == [[10]]


def test_maintenance_runs_kept_is_a_knob(runtime: Runtime) -> None:
    rt = runtime
    kept = load_config(environ={"DUCKMESH_MAINTENANCE_RUNS_KEPT": "2"}).maintenance_runs_kept
    assert kept == 2
    assert load_config(environ={}).maintenance_runs_kept == 1000
    with pytest.raises(ConfigError):
        load_config(environ={"DUCKMESH_MAINTENANCE_RUNS_KEPT": "0"})
    rt.config = attrs.evolve(rt.config, maintenance_runs_kept=kept)
    collector = collector_for(rt)
    collector.settings = attrs.evolve(
        collector.settings, retain_count=1, retain_s=0.0, safety_window_s=0.0
    )
    rt.db.call(lambda c: commands.create_table(c, "default", LOG_TABLE))
    for n in range(3):  # each round: a compaction and a collector run that changed something
        batches = [[{"idempotency_key": f"m{n}-{i}", "payload": {"id": i}}] for i in range(8)]
        _ingest_commits(rt, "log", batches)
        assert compactor_for(rt).compact("default").files_merged >= 8
        collector.retain("default")
    # The newest two when the last run pruned, plus that run's own row (6
    # rows when the knob did not reach the collector).
    newest = "SELECT position FROM event_log WHERE event_type = 'MaintenanceCompleted'"
    assert _count(rt, "SELECT count(*) FROM maintenance_run") == kept + 1
    assert _count(rt, "SELECT min(position) FROM maintenance_run") == _count(
        rt, f"SELECT min(position) FROM ({newest} ORDER BY position DESC LIMIT 3) AS n"
    )
    assert _verified(rt)
