"""A commit puts its files while its publish begins (coordinator/puts.py),
and the publish commits only once every put succeeded."""

from __future__ import annotations

from pathlib import Path

from duckmesh.catalog import commands, reads
from duckmesh.coordinator.committer import CommitSettings, Committer
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.runtime import Runtime
from duckmesh.storage.local import SCRATCH, LocalObjectStore
from duckmesh.storage.protocol import ObjectInfo
from duckmesh.supervisors.faults import FaultPoints


class DiskFullStore(LocalObjectStore):
    """A real local store whose puts fail, as on a full disk."""

    def put_file(self, source: Path, key: str, checksum: str | None = None) -> ObjectInfo:
        raise OSError(28, "No space left on device")


def _ingest(rt: Runtime) -> None:
    table = rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    records = validate_records(
        TableValidator.for_table(table),
        [{"idempotency_key": str(i), "payload": {"id": i}} for i in range(3)],
        max_records=10,
        max_record_bytes=1000,
    )
    rt.bus.publish("default", [records])


def test_a_failed_put_publishes_nothing_and_the_batch_commits_later(runtime: Runtime) -> None:
    rt = runtime
    _ingest(rt)
    assert isinstance(rt.store, LocalObjectStore)
    root = rt.store.root
    before = rt.db.call(lambda c: reads.latest_snapshot(c, "default"))
    failing = Committer(
        rt.db, rt.bus, DiskFullStore(root), FaultPoints(), CommitSettings(backoff_s=0.0), "c"
    )
    outcome = failing.commit_once()
    assert outcome is not None
    assert outcome.snapshot_id is None  # given back, not published
    assert rt.db.call(lambda c: reads.latest_snapshot(c, "default")) == before
    assert rt.bus.committed_token("default") == 0
    assert list((root / SCRATCH).iterdir()) == []  # the built file did not linger

    working = Committer(rt.db, rt.bus, rt.store, FaultPoints(), CommitSettings(), "c")
    outcome = working.commit_once()
    assert outcome is not None
    assert outcome.snapshot_id is not None
    assert rt.bus.committed_token("default") == 3
    files = rt.db.call(lambda c: reads.snapshot_files(c, "default", outcome.snapshot_id or 0))
    assert [rt.store.stat(f.path) is not None for f in files] == [True]
