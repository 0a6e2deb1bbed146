"""Issue 15, damaged files on the maintenance side: the compactor skips and
reports a damaged input and keeps compacting the other tables; the
integrity actor finds a truncated file within its interval."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio

from duckmesh import metrics
from duckmesh.catalog import commands
from duckmesh.maintenance.actors import TenantPassActor, compactor_for
from duckmesh.runtime import Runtime
from tests.fixtures import table_paths
from tests.maintenance.test_compaction import LOG_TABLE, _ingest_commits, _live_files

OTHER_TABLE = dict(LOG_TABLE, name="other")


def _create(conn: Any, table: dict[str, Any]) -> None:
    commands.create_table(conn, "default", table)


def two_tables(rt: Runtime, commits: int) -> None:
    """Tables ``log`` and ``other``, one committed file per record in each."""
    for table in (LOG_TABLE, OTHER_TABLE):
        rt.db.call(functools.partial(_create, table=table))
        _ingest_commits(
            rt,
            str(table["name"]),
            [
                [{"idempotency_key": f"{table['name']}{i}", "payload": {"id": i}}]
                for i in range(commits)
            ],
        )


def truncate(rt: Runtime, key: str) -> None:
    path = rt.store.local_path(key)
    path.write_bytes(path.read_bytes()[:-10])


def garble(rt: Runtime, key: str) -> None:
    """Same size, unreadable: only reading the file finds it."""
    path = rt.store.local_path(key)
    data = bytearray(path.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)
    path.write_bytes(bytes(data))


async def test_compactor_skips_a_damaged_file_and_compacts_the_other_tables(
    runtime: Runtime,
) -> None:
    rt = runtime
    two_tables(rt, 8)
    truncate(rt, table_paths(rt, "log")[3])
    skipped = metrics.COMPACTION_DAMAGED_FILES._value.get()
    actor = TenantPassActor("compactor", compactor_for(rt).compact, rt.db, interval_s=0.05)
    async with trio.open_nursery() as nursery:
        # Old code: the pass raised and the actor crash-looped.
        nursery.start_soon(actor.run)
        with trio.fail_after(30):
            while actor.passes < 2:
                await trio.sleep(0.02)
        actor.request_stop()
    assert _live_files(rt, "other") == 1  # merged
    assert _live_files(rt, "log") == 8  # left as it was, damage and all
    assert metrics.COMPACTION_DAMAGED_FILES._value.get() >= skipped + 2  # reported each pass


async def test_compactor_finds_an_unreadable_file_of_the_right_size(runtime: Runtime) -> None:
    rt = runtime
    two_tables(rt, 8)
    garble(rt, table_paths(rt, "log")[0])
    summary = await trio.to_thread.run_sync(compactor_for(rt).compact, "default")
    assert summary.files_merged == 8  # the other table only
    assert _live_files(rt, "other") == 1
    assert _live_files(rt, "log") == 8


async def test_integrity_actor_reports_a_truncated_file_within_its_interval(
    make_config: Any, dsn: str
) -> None:
    from duckmesh.maintenance.actors import IntegrityActor
    from duckmesh.runtime import build_runtime, migrate_and_bootstrap

    interval_s = 0.5
    rt = build_runtime(make_config(integrity_interval_ms=500), dsn=dsn)
    migrate_and_bootstrap(rt)
    try:
        two_tables(rt, 2)
        mismatches = metrics.INTEGRITY_SIZE_MISMATCH._value.get()
        actor = IntegrityActor(rt, interval_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.run)
            with trio.fail_after(30):
                while actor.passes < 1:  # a clean pass first
                    await trio.sleep(0.02)
            damaged = table_paths(rt, "log")[1]
            truncate(rt, damaged)
            began = trio.current_time()
            with trio.fail_after(interval_s * 2 + 5):
                while not (report := _latest_integrity(rt))["size_mismatch"]:
                    await trio.sleep(0.02)
            found_after = trio.current_time() - began
            actor.request_stop()
        assert report["ok"] is False
        assert report["size_mismatch"] == [damaged]
        assert found_after < interval_s * 2 + 5
        assert metrics.INTEGRITY_SIZE_MISMATCH._value.get() > mismatches  # the alert's input
    finally:
        rt.close()


def _latest_integrity(rt: Runtime) -> dict[str, Any]:
    row = rt.db.call(
        lambda c: c.execute(
            "SELECT summary FROM maintenance_run WHERE kind = 'integrity'"
            " ORDER BY position DESC LIMIT 1"
        ).fetchone(),
        transaction=False,
    )
    return dict(row[0]) if row else {"size_mismatch": []}


def test_paced_check_reads_at_the_configured_rate_and_stops_when_asked() -> None:
    import threading
    import time

    from duckmesh.maintenance.integrity import CheckStopped, Pacer

    pacer = Pacer(1_000_000)
    pacer.start()
    began = time.monotonic()
    pacer.account(200_000)  # 0.2 s worth
    assert time.monotonic() - began >= 0.19
    threading.Timer(0.1, pacer.stop.set).start()
    with pytest.raises(CheckStopped):
        pacer.account(10_000_000)  # 10 s worth: the stop ends the wait
    assert time.monotonic() - began < 5
