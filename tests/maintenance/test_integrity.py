"""The integrity checker finds missing, truncated and altered files."""

from __future__ import annotations

from typing import Any

from duckmesh.catalog import commands, reads
from duckmesh.maintenance.integrity import IntegrityChecker
from duckmesh.runtime import Runtime
from tests.fixtures import LiveServer
from tests.maintenance.test_compaction import LOG_TABLE, log_with_commits


def _paths(rt: Runtime) -> list[str]:
    def load(c: Any) -> list[str]:
        head = reads.latest_snapshot(c, "default")
        assert head is not None
        return [f.path for f in reads.snapshot_files(c, "default", head.snapshot_id)]

    return rt.db.call(load, transaction=False)


def test_intact_then_damaged(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 3)
    checker = IntegrityChecker(rt.db, rt.store)
    clean = checker.verify("default")
    assert clean.ok is True
    assert clean.files_checked == 3
    first, second, third = sorted(_paths(rt))
    rt.store.delete(first)
    path = rt.store.local_path(second)
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    data = bytearray(rt.store.local_path(third).read_bytes())
    data[-20] ^= 0xFF  # same size, different bytes
    rt.store.local_path(third).write_bytes(bytes(data))
    report = checker.verify("default")
    assert report.ok is False
    assert report.missing == [first]
    assert report.size_mismatch == [second]
    assert report.checksum_mismatch == [third]
    runs = rt.db.call(
        lambda c: c.execute(
            "SELECT summary->>'ok' FROM maintenance_run WHERE kind = 'integrity' ORDER BY position"
        ).fetchall()
    )
    assert [r[0] for r in runs] == ["true", "false"]


def test_pinned_snapshots_are_checked_too(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 2)
    head = rt.db.call(lambda c: reads.latest_snapshot(c, "default"))
    assert head is not None
    rt.db.call(lambda c: commands.pin_snapshot(c, "default", head.snapshot_id - 1, True, "x"))
    report = IntegrityChecker(rt.db, rt.store).verify("default")
    assert report.snapshots_checked == [head.snapshot_id - 1, head.snapshot_id]


async def test_integrity_endpoint(server: LiveServer) -> None:
    await server.create_table(LOG_TABLE)
    r = await server.ingest(
        "log", [{"idempotency_key": "a", "payload": {"id": 1}}], wait_for_visibility=True
    )
    assert r.status_code == 200
    ok = await server.client.post("/v1/integrity/run")
    assert ok.status_code == 200, ok.text
    assert ok.json()["summary"]["ok"] is True
    snap = (await server.client.get(f"/v1/snapshots/{r.json()['visible_snapshot_id']}")).json()
    key = next(f["path"] for t in snap["tables"] for f in t["files"])
    server.rt.store.delete(key)
    failed = await server.client.post("/v1/integrity/run")
    assert failed.status_code == 500
    body = failed.json()
    assert body["error_code"] == "INTEGRITY_CHECK_FAILED"
    assert body["context"]["missing"] == [key]
