"""Issue 15: ``duckmesh backfill TABLE`` re-derives a table's files from the
bus (or a snapshot) and publishes them in one snapshot: a run killed between
files and rerun leaves every row exactly once, a second rerun publishes
nothing, a commit published meanwhile is kept, and a bus pruned past the
table's rows is a one-line refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import trio

from duckmesh.catalog import reads
from duckmesh.catalog.model import Snapshot
from duckmesh.maintenance.backfill import backfill_table
from duckmesh.maintenance.repair import repair_table
from tests.cli.helpers import run_in_thread, table_paths
from tests.fixtures import EVENTS, ORDERS, LiveServer

HOURS = 3  # one partition (one rebuilt file) per hour of event time
PER_HOUR = 4


async def _ingest(server: LiveServer) -> list[list[Any]]:
    """Rows in HOURS partitions over several commits; the rows as the API shows them."""
    await server.create_table(EVENTS)
    for h in range(HOURS):
        records = [
            {
                "idempotency_key": f"e{h}-{n}",
                "event_time": f"2026-01-01T0{h}:{n:02d}:00Z",
                "payload": {"id": h * PER_HOUR + n, "kind": f"k{h}", "value": n / 2},
            }
            for n in range(PER_HOUR)
        ]
        r = await server.ingest("events", records, wait_for_visibility=True)
        assert r.status_code == 200, r.text
    return await _rows(server)


async def _rows(server: LiveServer) -> list[list[Any]]:
    r = await server.query("SELECT id, kind, value FROM events ORDER BY id")
    assert r.status_code == 200, r.text
    rows: list[list[Any]] = r.json()["rows"]
    return rows


def _head(server: LiveServer) -> Snapshot:
    head = server.rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    assert head is not None
    return head


def _spawn_backfill(faults: str) -> subprocess.CompletedProcess[str]:
    """``duckmesh backfill events`` as a real process (the environment names
    the test catalog and data directory; ``faults`` arms fault points)."""
    env = dict(os.environ, DUCKMESH_ENABLE_FAULTS="1", DUCKMESH_FAULTS=faults)
    return subprocess.run(
        [sys.executable, "-m", "duckmesh.cli.main", "backfill", "events"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.usefixtures("catalog")
async def test_backfill_killed_between_files_resumes_with_every_row_once(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    original = await _ingest(server)
    assert len(original) == HOURS * PER_HOUR
    # Lose a file's rows the way an operator would: damage it, then repair.
    damaged = table_paths(server, "events")[1]
    path = server.rt.store.local_path(damaged)
    path.write_bytes(path.read_bytes()[:-10])
    code, _, err = await run_in_thread(capsys, "repair", "events")
    assert code == 0, err
    assert len(await _rows(server)) == (HOURS - 1) * PER_HOUR
    before = _head(server)

    killed = await trio.to_thread.run_sync(
        lambda: _spawn_backfill("backfill.after_file_write=kill")
    )
    assert killed.returncode == -9, killed.stderr  # SIGKILL after the first file
    assert _head(server) == before  # nothing published half-way
    assert len(await _rows(server)) == (HOURS - 1) * PER_HOUR

    done = await trio.to_thread.run_sync(lambda: _spawn_backfill(""))
    assert done.returncode == 0, done.stderr
    assert f"{HOURS}/{HOURS} files written" in done.stderr  # progress, plain lines
    head = _head(server)
    assert head.kind == "backfill"
    assert head.max_visibility_token == before.max_visibility_token
    assert await _rows(server) == original  # every row back, exactly once
    assert damaged not in table_paths(server, "events")
    audited = server.rt.db.call(
        lambda c: c.execute(
            "SELECT summary FROM maintenance_run WHERE tenant_id = 'default' AND kind = 'backfill'"
        ).fetchall(),
        transaction=False,
    )
    assert [row[0]["snapshot_id"] for row in audited] == [head.snapshot_id]
    assert audited[0][0]["files_added"] == HOURS

    # Idempotent: the files now match the bus, a rerun publishes nothing.
    code, out, err = await run_in_thread(capsys, "backfill", "events", "--json")
    assert code == 0, err
    assert '"unchanged": true' in out
    assert _head(server) == head
    assert await _rows(server) == original
    # the events prove the projections
    code, _, err = await run_in_thread(capsys, "replay", "verify")
    assert code == 0, err


@pytest.mark.usefixtures("catalog")
async def test_backfill_refuses_when_the_bus_was_pruned_past_the_table(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    original = await _ingest(server)
    head = _head(server)
    pruned = await trio.to_thread.run_sync(
        lambda: server.rt.bus.prune("default", window_s=0.001, chunk_tokens=1000)
    )
    assert pruned.deleted > 0

    code, out, err = await run_in_thread(capsys, "backfill", "events")
    assert code == 2
    assert "published snapshot" not in out
    assert err.count("\n") == 1
    assert "backfill refused: the bus no longer holds tokens" in err
    assert "--from-snapshot" in err
    assert _head(server) == head
    assert await _rows(server) == original


@pytest.mark.usefixtures("catalog")
async def test_backfill_from_a_snapshot_lists_its_files_again(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    original = await _ingest(server)
    good = _head(server)
    damaged = table_paths(server, "events")[0]
    path = server.rt.store.local_path(damaged)
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    assert (await run_in_thread(capsys, "repair", "events"))[0] == 0
    assert len(await _rows(server)) == (HOURS - 1) * PER_HOUR

    snapshot = str(good.snapshot_id)
    code, _, err = await run_in_thread(capsys, "backfill", "events", "--from-snapshot", snapshot)
    assert code == 2  # the snapshot's copy is the damaged object: refused, not listed
    assert f"file {damaged} is size" in err
    path.write_bytes(whole)  # the operator put a good copy back
    code, out, err = await run_in_thread(capsys, "backfill", "events", "--from-snapshot", snapshot)
    assert code == 0, err
    assert "published snapshot" in out
    assert await _rows(server) == original


@pytest.mark.usefixtures("catalog")
async def test_backfill_keeps_what_the_coordinator_commits_meanwhile(
    server: LiveServer,
) -> None:
    original = await _ingest(server)
    late = {"idempotency_key": "late", "payload": {"id": 999, "kind": "late", "value": 1.0}}

    async def commit_late() -> None:
        r = await server.ingest("events", [late], wait_for_visibility=True)
        assert r.status_code == 200, r.text

    def progress(done: int, total: int) -> None:
        if done == total:  # every file written, nothing published: a commit lands now
            trio.from_thread.run(commit_late)

    # Files equal to the live ones would publish nothing: make them differ.
    rt = server.rt
    damaged = table_paths(server, "events")[0]
    path = rt.store.local_path(damaged)
    path.write_bytes(path.read_bytes()[:-10])
    await trio.to_thread.run_sync(lambda: repair_table(rt.db, rt.store, "default", "events"))
    summary = await trio.to_thread.run_sync(
        lambda: backfill_table(rt.db, rt.store, "default", "events", progress=progress)
    )
    assert summary.snapshot_id == _head(server).snapshot_id
    assert await _rows(server) == sorted([*original, [999, "late", 1.0]])


def _append_json_records(server: LiveServer, ids: range) -> int:
    """Records kept as JSON in ``bus_record`` (what the bus does with a
    payload it cannot convert, and what it wrote before ADR 0014); their last token."""

    def write(c: Any) -> int:
        table = reads.get_table(c, "default", "events")
        assert table is not None
        row = c.execute(
            "UPDATE bus_token_counter SET last_token = last_token + %s"
            " WHERE tenant_id = 'default' RETURNING last_token",
            (len(ids),),
        ).fetchone()
        last = int(row[0])
        for token, n in enumerate(ids, last - len(ids) + 1):
            payload = f'{{"id":{n},"kind":"json","value":0.5}}'
            c.execute(
                "INSERT INTO bus_record (tenant_id, token, table_id, idempotency_key,"
                " payload_hash, op, payload, event_time, ingested_at, schema_version)"
                " VALUES ('default', %s, %s, %s, %s, 'insert', %s, NULL, now(), %s)",
                (token, table.table_id, f"j{n}", b"h", payload, table.schema_version),
            )
        c.execute("SELECT pg_notify('duckmesh_records', %s)", (f"default:{last}",))
        return last

    return server.rt.db.call(write)


@pytest.mark.usefixtures("catalog")
async def test_backfill_rebuilds_json_records_and_stored_batches_alike(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await _ingest(server)
    last = _append_json_records(server, range(100, 103))
    with trio.fail_after(30):
        while _head(server).max_visibility_token < last:
            await trio.sleep(0.05)
    everything = await _rows(server)
    assert [100, "json", 0.5] in everything
    damaged = table_paths(server, "events")[-1]  # the JSON records' file
    path = server.rt.store.local_path(damaged)
    path.write_bytes(path.read_bytes()[:-10])
    assert (await run_in_thread(capsys, "repair", "events"))[0] == 0
    assert [100, "json", 0.5] not in await _rows(server)

    code, _, err = await run_in_thread(capsys, "backfill", "events")
    assert code == 0, err
    assert await _rows(server) == everything


@pytest.mark.usefixtures("catalog")
async def test_backfill_of_a_keyed_table_keeps_the_newest_version_per_key(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await server.create_table(ORDERS)
    steps: list[list[tuple[str, str, int, str | None]]] = [
        [("a", "upsert", 1, "new"), ("b", "upsert", 2, "new"), ("c", "upsert", 3, "new")],
        [("d", "upsert", 1, "paid"), ("e", "delete", 2, None)],
        [("f", "upsert", 3, "shipped"), ("g", "upsert", 4, "new")],
    ]
    for step in steps:
        records = [
            {"idempotency_key": key, "op": op, "payload": {"order_id": oid, "status": status}}
            for key, op, oid, status in step
        ]
        r = await server.ingest("orders", records, wait_for_visibility=True)
        assert r.status_code == 200, r.text
    sql = "SELECT order_id, status FROM orders ORDER BY order_id"
    before = (await server.query(sql)).json()["rows"]
    assert before == [[1, "paid"], [3, "shipped"], [4, "new"]]

    code, out, err = await run_in_thread(capsys, "backfill", "orders")
    assert code == 0, err
    assert "nothing to do" in out  # one file per stored batch, as the commits wrote

    # Lose the second commit's file (the update of 1, the delete of 2).
    def second(c: Any) -> str:
        table = reads.get_table(c, "default", "orders")
        head = reads.latest_snapshot(c, "default")
        assert table is not None
        assert head is not None
        files = reads.snapshot_files(c, "default", head.snapshot_id)
        mine = sorted((f for f in files if f.table_id == table.table_id), key=lambda f: f.min_token)
        return mine[1].path

    path = server.rt.store.local_path(server.rt.db.call(second, transaction=False))
    path.write_bytes(path.read_bytes()[:-10])
    assert (await run_in_thread(capsys, "repair", "orders"))[0] == 0
    lost = (await server.query(sql)).json()["rows"]
    assert lost == [[1, "new"], [2, "new"], [3, "shipped"], [4, "new"]]

    code, out, err = await run_in_thread(capsys, "backfill", "orders")
    assert code == 0, err
    assert "published snapshot" in out
    assert (await server.query(sql)).json()["rows"] == before
