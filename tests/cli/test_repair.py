"""Issue 15: ``duckmesh repair TABLE`` makes a table with a damaged data file
answer again through the API: by publishing a snapshot without the file (an
event records it), or by putting back a backup copy with the recorded
checksum."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from duckmesh.catalog import reads
from tests.cli.helpers import run_in_thread, table_paths
from tests.fixtures import EVENTS, LiveServer

OTHER = dict(EVENTS, name="other")


async def _setup(server: LiveServer) -> str:
    """Tables ``events`` (three files) and ``other``; the key of events' second file."""
    await server.create_table(EVENTS)
    await server.create_table(OTHER)
    for n in range(3):
        record = {"idempotency_key": f"e{n}", "payload": {"id": n}}
        r = await server.ingest("events", [record], wait_for_visibility=True)
        assert r.status_code == 200, r.text
    r = await server.ingest(
        "other", [{"idempotency_key": "o", "payload": {"id": 9}}], wait_for_visibility=True
    )
    assert r.status_code == 200, r.text

    keys = table_paths(server, "events")
    assert len(keys) == 3
    return keys[1]


def _truncate(server: LiveServer, key: str) -> None:
    path = server.rt.store.local_path(key)
    path.write_bytes(path.read_bytes()[:-10])


async def _count(server: LiveServer, table: str, **kw: Any) -> Any:
    return await server.query(f"SELECT count(*) FROM {table}", **kw)


@pytest.mark.usefixtures("catalog")
async def test_repair_republishes_the_table_without_the_damaged_file(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    key = await _setup(server)
    _truncate(server, key)
    before = await _count(server, "events")
    assert before.status_code != 200, before.text  # the damage is seen

    code, out, err = await run_in_thread(capsys, "repair", "events")
    assert code == 0, err
    assert f"{key}: size" in out
    assert "removed" in out

    r = await _count(server, "events")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[2]]  # the damaged file's row is gone, the others answer
    assert (await _count(server, "other")).json()["rows"] == [[1]]

    def recorded(c: Any) -> tuple[Any, Any]:
        run_row = c.execute(
            "SELECT summary FROM maintenance_run WHERE tenant_id = 'default' AND kind = 'repair'"
        ).fetchone()
        head = reads.latest_snapshot(c, "default")
        return run_row[0], head

    summary, head = server.rt.db.call(recorded, transaction=False)
    assert summary["removed"] == [key]
    assert summary["records_removed"] == 1
    assert summary["snapshot_id"] == head.snapshot_id
    assert head.kind == "repair"


@pytest.mark.usefixtures("catalog")
async def test_repair_from_a_backup_copy_restores_the_file(
    server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = await _setup(server)
    backup = tmp_path / "backup"
    (backup / key).parent.mkdir(parents=True)
    shutil.copyfile(server.rt.store.local_path(key), backup / key)
    _truncate(server, key)
    assert (await _count(server, "events")).status_code != 200

    argv = ("repair", "events", "--from-backup", str(backup), "--json")
    code, out, err = await run_in_thread(capsys, *argv)
    assert code == 0, err
    assert '"restored": [' in out
    assert key in out

    r = await _count(server, "events")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[3]]  # nothing lost


@pytest.mark.usefixtures("catalog")
async def test_repair_of_a_whole_table_changes_nothing(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await _setup(server)
    head = server.rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    code, out, _ = await run_in_thread(capsys, "repair", "events")
    assert code == 0
    assert "nothing to repair" in out
    after = server.rt.db.call(lambda c: reads.latest_snapshot(c, "default"), transaction=False)
    assert after == head
    code, _, err = await run_in_thread(capsys, "repair", "nope")
    assert code == 1
    assert "TABLE_NOT_FOUND" in err
