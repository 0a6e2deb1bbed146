"""POST /v1/snapshots/restore: a new snapshot whose tables equal an older one's,
published through the one publisher, audited, and safe from GC."""

from __future__ import annotations

from typing import Any

from duckmesh.maintenance.compaction import CompactionSettings, Compactor
from duckmesh.maintenance.gc import Collector, RetentionSettings
from duckmesh.projections import replay
from tests.api.helpers import assert_error, bearer, issue_key
from tests.fixtures import LiveServer

KV = {
    "name": "kv",
    "columns": [
        {"name": "k", "type": "INTEGER", "nullable": False},
        {"name": "v", "type": "VARCHAR"},
    ],
    "primary_key": ["k"],
}


async def _upsert(srv: LiveServer, key: str, k: int, v: str) -> int:
    r = await srv.ingest(
        "kv",
        [{"idempotency_key": key, "op": "upsert", "payload": {"k": k, "v": v}}],
        wait_for_visibility=True,
    )
    assert r.status_code == 200, r.text
    snapshot: int = r.json()["visible_snapshot_id"]
    return snapshot


async def _rows(srv: LiveServer, **kw: Any) -> Any:
    r = await srv.query("select k, v from kv order by k", **kw)
    assert r.status_code == 200, r.text
    return r.json()


async def test_restore_publishes_an_older_snapshots_tables(server: LiveServer) -> None:
    srv = server
    await srv.create_table(KV)
    await _upsert(srv, "a", 1, "one")
    good = await _upsert(srv, "b", 2, "two")
    await _upsert(srv, "c", 1, "changed")
    await _upsert(srv, "d", 3, "three")
    # Compaction removes the files snapshot `good` lists: the restore lists
    # those objects again under new file ids.
    settings = CompactionSettings(min_files=2, target_bytes=1 << 30)
    compactor = Compactor(srv.rt.db, srv.rt.store, srv.rt.faults, settings)
    assert compactor.compact("default").files_merged == 4
    before = await _rows(srv)
    assert before["rows"] == [[1, "changed"], [2, "two"], [3, "three"]]

    r = await srv.client.post("/v1/snapshots/restore", json={"snapshot_id": good})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["restored_from"] == good
    assert body["snapshot_id"] == before["snapshot_id"] + 1
    assert body["max_visibility_token"] == before["max_visibility_token"]
    assert body["tables"] == ["kv"]
    assert (body["files_added"], body["files_removed"]) == (2, 1)
    after = await _rows(srv)
    assert after["rows"] == [[1, "one"], [2, "two"]]
    assert after["snapshot_id"] == body["snapshot_id"]
    # Time travel to the snapshot before the restore answers as before.
    assert (await _rows(srv, snapshot_id=before["snapshot_id"]))["rows"] == before["rows"]
    # Writes after the restore commit on top of it.
    await _upsert(srv, "e", 4, "four")
    assert (await _rows(srv))["rows"] == [[1, "one"], [2, "two"], [4, "four"]]
    # Audited with the key that asked.
    audit = (await srv.client.get("/v1/audit")).json()["entries"]
    restores = [e for e in audit if e["summary"].get("kind") == "restore"]
    assert len(restores) == 1
    assert restores[0]["summary"]["summary"]["restored_from"] == good
    assert restores[0]["actor_key_id"] is not None
    # GC: the objects listed again stay while the restored snapshot needs them,
    # even once every snapshot that first listed them has expired.
    collector = Collector(
        srv.rt.db,
        srv.rt.store,
        RetentionSettings(retain_count=1, retain_s=0.0, safety_window_s=0.0),
    )
    assert collector.retain("default").files_deleted >= 4  # the inputs' rows, the merged file
    assert (await _rows(srv))["rows"] == [[1, "one"], [2, "two"], [4, "four"]]
    assert all(d.equal for d in srv.rt.db.call(replay.verify, transaction=False))


async def test_restore_refusals(server: LiveServer) -> None:
    srv = server
    await srv.create_table(KV)
    latest = await _upsert(srv, "a", 1, "one")
    r = await srv.client.post("/v1/snapshots/restore", json={"snapshot_id": latest})
    assert_error(r, 400, "VALIDATION_FAILED")
    r = await srv.client.post("/v1/snapshots/restore", json={"snapshot_id": 999})
    assert_error(r, 404, "SNAPSHOT_NOT_FOUND")
    r = await srv.client.post("/v1/snapshots/restore", json={"snapshot_id": 1, "x": 1})
    assert_error(r, 400, "VALIDATION_FAILED")
    _, reader = await issue_key(srv.rt, "default", ["query_reader"])
    r = await srv.client.post(
        "/v1/snapshots/restore", json={"snapshot_id": 1}, headers=bearer(reader)
    )
    assert_error(r, 403, "FORBIDDEN")
    _, ops = await issue_key(srv.rt, "default", ["ops_admin"])
    r = await srv.client.post("/v1/snapshots/restore", json={"snapshot_id": 1}, headers=bearer(ops))
    assert r.status_code == 200, r.text
    assert (await _rows(srv))["rows"] == []  # snapshot 1: the table, no rows
