"""The snapshot publication service on a real catalog: the snapshot-id
invariant, the abort and rebase conflict policies, one transaction with the
caller's writes, and the event's file list staying readable in its old shape."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from duckmesh import events
from duckmesh.catalog import commands, reads, snapshots
from duckmesh.catalog.model import Snapshot
from duckmesh.catalog.snapshots import (
    ConflictPolicy,
    RebaseRefused,
    SnapshotChange,
    StaleParent,
)
from duckmesh.db import Database
from duckmesh.events.types import SnapshotPublished, decode
from duckmesh.projections import replay
from duckmesh.storage.layout import DataFile

Conn = psycopg.Connection[Any]
TENANT = "acme"


@pytest.fixture
def db(dsn: str) -> Iterator[Database]:
    database = Database(dsn, size=2)
    database.call(lambda c: commands.create_tenant(c, TENANT, actor="test"))
    database.call(
        lambda c: commands.create_table(
            c, TENANT, {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}, actor="t"
        )
    )
    yield database
    database.close()


def _head(db: Database) -> Snapshot:
    head = db.call(lambda c: reads.latest_snapshot(c, TENANT), transaction=False)
    assert head is not None
    return head


def _table_id(db: Database) -> str:
    table = db.call(lambda c: reads.get_table(c, TENANT, "log"), transaction=False)
    assert table is not None
    return table.table_id


def _file(table_id: str, file_id: str, first: int, last: int) -> DataFile:
    return DataFile(
        file_id=file_id,
        table_id=table_id,
        path=f"{TENANT}/{table_id}/date=2026-12-01/part-{file_id}.parquet",
        schema_version=1,
        record_count=last - first + 1,
        size_bytes=100,
        checksum="0" * 64,
        min_token=first,
        max_token=last,
        min_event_time=dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC),
        max_event_time=dt.datetime(2026, 12, 1, 11, 30, tzinfo=dt.UTC),
    )


def _commit(table_id: str, file_id: str, first: int, last: int) -> SnapshotChange:
    return SnapshotChange(
        tenant_id=TENANT,
        kind="commit",
        created_by="test",
        files_added=[_file(table_id, file_id, first, last)],
        table_watermarks={table_id: last},
        max_visibility_token=last,
    )


def _stream_version(db: Database) -> int:
    stream = snapshots.snapshots_stream(TENANT)
    return db.call(lambda c: events.stream_version(c, stream), transaction=False)


def _live_file_ids(db: Database) -> set[str]:
    head = _head(db)
    files = db.call(lambda c: reads.snapshot_files(c, TENANT, head.snapshot_id))
    return {f.file_id for f in files}


def _projections_equal_the_log(db: Database) -> bool:
    return db.call(lambda c: all(d.equal for d in replay.verify(c)), transaction=False)


def test_snapshot_id_is_the_stream_version_and_parent_plus_one(db: Database) -> None:
    table_id = _table_id(db)
    parent = _head(db)
    published = snapshots.publish(
        db, _commit(table_id, "f1", 1, 3), parent, policy=ConflictPolicy.ABORT
    )
    assert published.snapshot_id == parent.snapshot_id + 1 == _stream_version(db)
    head = _head(db)
    assert (head.snapshot_id, head.parent_id, head.max_visibility_token) == (
        published.snapshot_id,
        parent.snapshot_id,
        3,
    )
    assert _live_file_ids(db) == {"f1"}
    assert _projections_equal_the_log(db)


def test_abort_refuses_a_stale_parent_and_writes_nothing(db: Database) -> None:
    table_id = _table_id(db)
    stale = _head(db)
    winner = snapshots.publish(
        db, _commit(table_id, "f1", 1, 3), stale, policy=ConflictPolicy.ABORT
    )
    with pytest.raises(StaleParent) as refused:
        snapshots.publish(db, _commit(table_id, "f2", 4, 5), stale, policy=ConflictPolicy.ABORT)
    assert refused.value.parent_id == stale.snapshot_id
    assert isinstance(refused.value, events.ConcurrencyConflict)  # command retries catch it
    assert _stream_version(db) == winner.snapshot_id
    assert _head(db).max_visibility_token == 3
    assert _live_file_ids(db) == {"f1"}
    assert _projections_equal_the_log(db)


def test_rebase_reapplies_the_change_on_the_new_head(db: Database) -> None:
    table_id = _table_id(db)
    stale = _head(db)
    snapshots.publish(db, _commit(table_id, "f1", 1, 3), stale, policy=ConflictPolicy.ABORT)
    seen: list[int] = []

    def still_valid(conn: Conn, head: Snapshot | None) -> bool:
        assert head is not None
        seen.append(head.snapshot_id)
        return True

    compaction = SnapshotChange(
        tenant_id=TENANT,
        kind="compaction",
        created_by="test",
        files_added=[_file(table_id, "merged", 1, 3)],
        files_removed=["f1"],
    )
    # Prepared on the stale head: another publisher (f1) won the race.
    published = snapshots.publish(
        db, compaction, stale, policy=ConflictPolicy.REBASE, still_valid=still_valid
    )
    assert seen == [stale.snapshot_id + 1]
    assert published.snapshot_id == stale.snapshot_id + 2 == _stream_version(db)
    head = _head(db)
    assert head.parent_id == stale.snapshot_id + 1
    assert head.max_visibility_token == 3  # the new head's watermark, kept
    assert _live_file_ids(db) == {"merged"}
    assert _projections_equal_the_log(db)


def test_rebase_refused_when_the_change_no_longer_applies(db: Database) -> None:
    table_id = _table_id(db)
    stale = _head(db)
    snapshots.publish(db, _commit(table_id, "f1", 1, 3), stale, policy=ConflictPolicy.ABORT)
    with pytest.raises(RebaseRefused):
        snapshots.publish(
            db,
            _commit(table_id, "f2", 1, 2),
            stale,
            policy=ConflictPolicy.REBASE,
            still_valid=lambda conn, head: False,
        )
    assert _live_file_ids(db) == {"f1"}
    assert _stream_version(db) == stale.snapshot_id + 1


def test_the_callers_writes_share_the_publishing_transaction(db: Database) -> None:
    table_id = _table_id(db)
    parent = _head(db)

    def fail_after(conn: Conn, snapshot_id: int) -> None:
        assert snapshot_id == parent.snapshot_id + 1
        raise RuntimeError("the caller's write failed")

    with pytest.raises(RuntimeError):
        snapshots.publish(
            db, _commit(table_id, "f1", 1, 3), parent, policy=ConflictPolicy.ABORT, after=fail_after
        )
    assert _head(db) == parent
    assert _stream_version(db) == parent.snapshot_id
    assert _live_file_ids(db) == set()


def test_the_rebase_policy_needs_a_check(db: Database) -> None:
    with pytest.raises(ValueError, match="still_valid"):
        snapshots.publish(
            db, _commit(_table_id(db), "f1", 1, 1), _head(db), policy=ConflictPolicy.REBASE
        )


def test_files_keep_their_stored_json_shape() -> None:
    """Event logs written before ``DataFile`` existed replay unchanged."""
    old = {
        "file_id": "f1",
        "table_id": "log-1",
        "path": "acme/log-1/date=2026-12-01/hour=10/part-000000000002-0001-ab12cd34.parquet",
        "schema_version": 1,
        "record_count": 3,
        "size_bytes": 812,
        "checksum": "ab" * 32,
        "min_token": 1,
        "max_token": 3,
        "min_event_time": "2026-12-01T10:00:00.250000+00:00",
        "max_event_time": None,
    }
    payload = {
        "tenant_id": "acme",
        "snapshot_id": 2,
        "kind": "commit",
        "created_by": "c",
        "max_visibility_token": 3,
        "parent_id": 1,
        "table_watermarks": {"log-1": 3},
        "files_added": [old, {k: v for k, v in old.items() if not k.endswith("event_time")}],
        "files_removed": [],
        "fence": 4,
        "restored_from": None,
    }
    event = decode("SnapshotPublished", 1, payload)
    assert isinstance(event, SnapshotPublished)
    assert event.files_added[0].min_event_time == dt.datetime(
        2026, 12, 1, 10, 0, 0, 250000, tzinfo=dt.UTC
    )
    assert event.files_added[1].min_event_time is None
    again = event.to_payload()
    assert again["files_added"][0] == old
    assert again["files_added"][1] == dict(old, min_event_time=None)
    assert {k: v for k, v in again.items() if k != "files_added"} == {
        k: v for k, v in payload.items() if k != "files_added"
    }
