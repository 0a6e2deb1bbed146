"""Compaction merges small files without changing any answer, old or new."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import trio

from duckmesh.bus import UploadRequest
from duckmesh.catalog import commands, reads
from duckmesh.maintenance.actors import compactor_for
from duckmesh.projections import replay
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime
from duckmesh.supervisors.faults import FaultInjected, FaultPoints
from tests.fixtures import LiveServer, shared_committer


def _ingest_commits(rt: Runtime, table: str, batches: list[list[dict[str, Any]]]) -> None:
    from duckmesh.ingest.validation import TableValidator, validate_records

    tdef = rt.db.call(lambda c: reads.get_table(c, "default", table))
    assert tdef is not None
    tv = TableValidator.for_table(tdef)
    committer = shared_committer(rt)
    for batch in batches:
        records = validate_records(tv, batch, max_records=1000, max_record_bytes=10_000)
        assert not isinstance(rt.bus.publish("default", [records])[0], Exception)
        assert committer.commit_once() is not None  # one commit, one file per batch


LOG_TABLE = {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}
KV_TABLE = {
    "name": "kv",
    "columns": [
        {"name": "k", "type": "INTEGER", "nullable": False},
        {"name": "v", "type": "VARCHAR"},
    ],
    "primary_key": ["k"],
}


def log_with_commits(rt: Runtime, commits: int, prefix: str = "l") -> None:
    """Table ``log`` with one committed file per record."""
    rt.db.call(lambda c: commands.create_table(c, "default", LOG_TABLE))
    _ingest_commits(
        rt,
        "log",
        [[{"idempotency_key": f"{prefix}{i}", "payload": {"id": i}}] for i in range(commits)],
    )


async def _rows(rt: Runtime, sql: str, **kw: Any) -> Any:
    return await rt.queries.execute("default", QueryRequest(sql=sql, **kw))


def _live_files(rt: Runtime, table: str) -> int:
    def count(c: Any) -> int:
        head = reads.latest_snapshot(c, "default")
        assert head is not None
        tdef = reads.get_table(c, "default", table)
        assert tdef is not None
        return sum(
            1
            for f in reads.snapshot_files(c, "default", head.snapshot_id)
            if f.table_id == tdef.table_id
        )

    return int(rt.db.call(count, transaction=False))


async def test_keyed_and_append_tables_compact_without_changing_answers(
    runtime: Runtime,
) -> None:
    rt = runtime
    rt.db.call(
        lambda c: commands.create_table(
            c,
            "default",
            KV_TABLE,
        )
    )
    rt.db.call(
        lambda c: commands.create_table(
            c, "default", {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}
        )
    )
    batches = []
    for b in range(10):
        batch = [
            {"idempotency_key": f"u{b}-{k}", "op": "upsert", "payload": {"k": k, "v": f"b{b}"}}
            for k in range(b % 4, 6)
        ]
        if b % 3 == 2:
            batch.append({"idempotency_key": f"d{b}", "op": "delete", "payload": {"k": b % 6}})
        batches.append(batch)
    _ingest_commits(rt, "kv", batches)
    _ingest_commits(
        rt, "log", [[{"idempotency_key": f"l{i}", "payload": {"id": i}}] for i in range(9)]
    )
    before_kv = await _rows(rt, "select k, v from kv order by k")
    before_log = await _rows(rt, "select count(*), sum(id) from log")
    old_snapshot = before_kv["snapshot_id"]
    assert _live_files(rt, "kv") == 10
    # A keyed delete lives in a file outside the merge when min_files is hit
    # by part of the history only; all ten merge here, tombstones kept.
    summary = compactor_for(rt).compact("default")
    assert summary.files_merged == 19
    assert summary.files_written == 2
    assert summary.snapshot_id == old_snapshot + 1
    assert _live_files(rt, "kv") == 1
    after_kv = await _rows(rt, "select k, v from kv order by k")
    assert after_kv["rows"] == before_kv["rows"]
    assert after_kv["max_visibility_token"] == before_kv["max_visibility_token"]
    assert (await _rows(rt, "select count(*), sum(id) from log"))["rows"] == before_log["rows"]
    # Time travel: the old snapshot still reads its own files.
    again = await _rows(rt, "select k, v from kv order by k", snapshot_id=old_snapshot)
    assert again["rows"] == before_kv["rows"]
    assert again["stats"]["scanned_files"] == 10
    # Later writes resolve against the compacted file (deletes still hide keys).
    _ingest_commits(rt, "kv", [[{"idempotency_key": "late", "op": "delete", "payload": {"k": 5}}]])
    latest = await _rows(rt, "select k from kv order by k")
    assert [5] not in latest["rows"]
    assert compactor_for(rt).compact("default").files_merged == 0  # below min
    assert all(d.equal for d in rt.db.call(replay.verify, transaction=False))


async def test_interrupted_compaction_changes_nothing(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 8, "l")
    head = rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    compactor = compactor_for(rt)
    compactor.faults = FaultPoints(enabled=True)
    compactor.faults.arm("compaction.before_publish", "raise")
    with pytest.raises(FaultInjected):
        await trio.to_thread.run_sync(compactor.compact, "default")
    after = rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    assert after == head
    assert _live_files(rt, "log") == 8
    assert (await _rows(rt, "select count(*) from log"))["rows"] == [[8]]


async def test_compaction_rebases_over_a_concurrent_commit(runtime: Runtime) -> None:
    rt = runtime
    log_with_commits(rt, 8, "l")
    compactor = compactor_for(rt)
    compactor.faults = FaultPoints(enabled=True)
    # While the merge is written, a commit publishes first.
    original = compactor._merge

    def merge_then_commit(*args: Any, **kw: Any) -> Any:
        out = original(*args, **kw)
        _ingest_commits(rt, "log", [[{"idempotency_key": "mid", "payload": {"id": 100}}]])
        return out

    compactor._merge = merge_then_commit  # type: ignore[method-assign]
    summary = await trio.to_thread.run_sync(compactor.compact, "default")
    assert summary.snapshot_id is not None
    result = await _rows(rt, "select count(*), max(id) from log")
    assert result["rows"] == [[9, 100]]
    assert _live_files(rt, "log") == 2  # the merged file and the concurrent commit's


async def test_compaction_endpoint(server: LiveServer) -> None:
    await server.create_table(LOG_TABLE)
    for i in range(8):
        r = await server.ingest(
            "log", [{"idempotency_key": f"k{i}", "payload": {"id": i}}], wait_for_visibility=True
        )
        assert r.status_code == 200
    r = await server.client.post("/v1/compaction/run")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    assert set(body["summary"]) == {
        "files_merged",
        "files_written",
        "bytes_rewritten",
        "snapshot_id",
    }
    # Whether this call or the background compactor merged them, one file is left.
    q = (await server.query("select count(*) from log")).json()
    assert q["rows"] == [[8]]
    assert q["stats"]["scanned_files"] == 1
    snap = (await server.client.get(f"/v1/snapshots/{q['snapshot_id']}")).json()
    assert [len(t["files"]) for t in snap["tables"] if t["name"] == "log"] == [1]


async def test_a_merge_larger_than_its_memory_bound_still_keeps_every_row(
    runtime: Runtime,
) -> None:
    """``DUCKMESH_COMPACTION_MEMORY_MB`` bounds DuckDB in a merge (the bulk-load
    memory peak, ADR 0014): the sort spills to scratch, and a merge that
    cannot fit at all (a Parquet row group of wide rows is buffered whole) is
    retried without the bound instead of failing."""
    rt = runtime
    table = rt.db.call(
        lambda c: commands.create_table(
            c,
            "default",
            LOG_TABLE
            | {"columns": [{"name": "id", "type": "BIGINT"}, {"name": "pad", "type": "VARCHAR"}]},
        )
    )
    committer = shared_committer(rt)
    for n in range(3):  # three files of 100,000 rows, ~65 MB to sort in all
        ids = pa.array(range(n * 100_000, (n + 1) * 100_000), pa.int64())
        pad = pc.binary_join_element_wise(ids.cast(pa.string()), "x" * 200, "")
        rt.bus.publish_upload(
            "default",
            UploadRequest(
                table.table_id,
                "insert",
                None,
                1,
                pa.table({"id": ids, "pad": pad}),
                hashlib.sha256(str(n).encode()).digest(),
                f"u{n}",
                None,
                None,
            ),
        )
        assert committer.commit_once() is not None
    compactor = compactor_for(rt)
    compactor.settings = attrs.evolve(compactor.settings, min_files=2, memory_mb=16)
    summary = await trio.to_thread.run_sync(compactor.compact, "default")
    assert (summary.files_merged, summary.files_written) == (3, 1)
    result = await _rows(rt, "select count(*), count(distinct id), max(length(pad)) from log")
    assert result["rows"] == [[300_000, 300_000, 206]]
