"""The bounded bus: committed records past the idempotency window are pruned
by a retention run; uncommitted ones never are, retries within the window are
still duplicates, and token order and visibility are unaffected."""

from __future__ import annotations

import time
from typing import Any

from duckmesh import metrics
from duckmesh.catalog import commands, reads
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.maintenance.actors import collector_for
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, build_runtime, migrate_and_bootstrap
from tests.api.helpers import eventually
from tests.api.test_upload import upload
from tests.bus.contract import ok
from tests.fixtures import LiveServer, StartApp, shared_committer
from tests.maintenance.test_compaction import LOG_TABLE, _ingest_commits

TABLE = {"name": "ev", "columns": [{"name": "id", "type": "BIGINT"}]}


def _records(keys: range) -> list[dict[str, Any]]:
    return [{"idempotency_key": f"k{i}", "payload": {"id": i}} for i in keys]


async def _ingest(srv: LiveServer, keys: range, **kw: Any) -> dict[str, Any]:
    r = await srv.ingest("ev", _records(keys), **kw)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _retention(srv: LiveServer) -> dict[str, Any]:
    r = await srv.client.post("/v1/retention/run")
    assert r.status_code == 200, r.text
    summary: dict[str, Any] = r.json()["summary"]
    return summary


async def _upload(srv: LiveServer, ids: range, key: str) -> dict[str, Any]:
    csv = ("id\n" + "".join(f"{i}\n" for i in ids)).encode()
    r = await upload(srv, "ev", csv, "text/csv", key=key, wait_for_visibility="true")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_committed_records_pruned_after_a_one_second_window(start_app: StartApp) -> None:
    srv = await start_app(idempotency_window_ms=1000, maintenance_interval_ms=86_400_000)
    await srv.create_table(TABLE)
    start = time.monotonic()
    first = await _ingest(srv, range(5), wait_for_visibility=True)
    assert first["max_visibility_token"] == 5
    up = await _upload(srv, range(100, 103), "up-1")
    assert up["max_visibility_token"] == 8
    # Within the window retries are duplicates with their original tokens.
    retry = await _ingest(srv, range(5))
    assert (retry["accepted_count"], retry["duplicate_count"]) == (0, 5)
    assert retry["max_visibility_token"] == 5
    assert (await _upload(srv, range(100, 103), "up-1"))["max_visibility_token"] == 8
    summary = await _retention(srv)
    if time.monotonic() - start < 0.9:  # the run could only have found rows inside the window
        assert summary["bus_records_deleted"] == 0
    deleted = summary["bus_records_deleted"]

    async def pruned() -> bool:
        nonlocal deleted
        deleted += (await _retention(srv))["bus_records_deleted"]
        return deleted == 8

    await eventually(pruned, timeout=15.0, interval=0.2)
    assert srv.rt.bus.retained("default").records == 0
    assert metrics.BUS_RETAINED_RECORDS.labels(tenant="default")._value.get() == 0

    # Past the window the keys are new: new tokens after the old ones, and
    # everything committed stays visible as it was.
    again = await _ingest(srv, range(3), wait_for_visibility=True)
    assert (again["accepted_count"], again["duplicate_count"]) == (3, 0)
    assert again["max_visibility_token"] == 11
    assert (await _upload(srv, range(100, 103), "up-1"))["max_visibility_token"] == 14
    r = await srv.query("select count(*), count(distinct id) from ev", min_visibility_token=14)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[14, 8]]


def _age_bus(rt: Runtime, seconds: int) -> None:
    """Make every bus row ``seconds`` older (instead of waiting)."""

    def age(conn: Any) -> None:
        for table in ("bus_record", "bus_batch"):
            conn.execute(
                f"UPDATE {table} SET ingested_at = ingested_at - make_interval(secs => %s)",
                (seconds,),
            )

    rt.db.call(age)


async def test_uncommitted_records_are_never_pruned(make_config: Any, dsn: str) -> None:
    rt = build_runtime(make_config(idempotency_window_ms=1000), dsn=dsn)
    migrate_and_bootstrap(rt)
    try:
        rt.db.call(lambda c: commands.create_table(c, "default", LOG_TABLE))
        # Tokens 1..3 committed (one file each), 4..6 published but never claimed.
        _ingest_commits(
            rt, "log", [[{"idempotency_key": f"c{i}", "payload": {"id": i}}] for i in range(3)]
        )
        tdef = rt.db.call(lambda c: reads.get_table(c, "default", "log"))
        assert tdef is not None
        pending = validate_records(
            TableValidator.for_table(tdef),
            [{"idempotency_key": f"p{i}", "payload": {"id": 10 + i}} for i in range(3)],
            max_records=10,
            max_record_bytes=10_000,
        )
        ok(rt.bus.publish("default", [pending])[0])
        _age_bus(rt, 86_400)
        collector = collector_for(rt)
        assert collector.retain("default").bus_records_deleted == 3
        assert collector.retain("default").bus_records_deleted == 0
        assert rt.bus.retained("default").records == 3
        # The pending ones still commit, after the pruned tokens, and are visible.
        assert shared_committer(rt).commit_once() is not None
        result = await rt.queries.execute(
            "default",
            QueryRequest(sql="select list(id order by id) from log", min_visibility_token=6),
        )
        assert result["rows"] == [[[0, 1, 2, 10, 11, 12]]]
        assert result["max_visibility_token"] == 6
        # A retry of a pending (now committed, not yet old) key is still a duplicate.
        again = rt.bus.publish("default", [pending])[0]
        assert [r.duplicate for r in ok(again)] == [True, True, True]
    finally:
        rt.close()
