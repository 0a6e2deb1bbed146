"""``duckmesh restore``: backup, write more, restore. A token or snapshot id
from the lost range is refused clearly, never answered with other data; a
record pending at the backup still commits and its receipt's token still
works; new writes work."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from duckmesh.catalog import commands, reads
from duckmesh.cli.restore import _pg_tool
from duckmesh.config import Config
from duckmesh.errors import DuckMeshError
from duckmesh.ingest.validation import TableValidator, validate_records
from duckmesh.projections import replay
from duckmesh.query.service import QueryRequest
from duckmesh.runtime import Runtime, build_runtime, migrate_and_bootstrap
from tests.bus.contract import ok
from tests.cli.helpers import run
from tests.fixtures import shared_committer
from tests.maintenance.test_compaction import LOG_TABLE, _ingest_commits


def _publish(rt: Runtime, key: str, value: int) -> int:
    tdef = rt.db.call(lambda c: reads.get_table(c, "default", "log"))
    assert tdef is not None
    records = validate_records(
        TableValidator.for_table(tdef),
        [{"idempotency_key": key, "payload": {"id": value}}],
        max_records=1,
        max_record_bytes=10_000,
    )
    return ok(rt.bus.publish("default", [records])[0])[0].token


async def _count(rt: Runtime, **kw: Any) -> Any:
    return await rt.queries.execute("default", QueryRequest(sql="select count(*) from log", **kw))


async def test_restore_voids_the_lost_range(
    catalog: str,
    make_config: Callable[..., Config],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rt = build_runtime(make_config(), dsn=catalog)
    migrate_and_bootstrap(rt)
    rt.db.call(lambda c: commands.create_table(c, "default", LOG_TABLE))
    _ingest_commits(
        rt, "log", [[{"idempotency_key": f"c{i}", "payload": {"id": i}}] for i in range(2)]
    )
    pending = _publish(rt, "pending", 10)  # durable, not yet committed at the backup
    assert pending == 3
    # Backup: the catalog, then the objects (docs/OPERATIONS.md).
    dump = tmp_path / "catalog.dump"
    subprocess.run([_pg_tool("pg_dump"), "--format=custom", f"--file={dump}", catalog], check=True)
    shutil.copytree(tmp_path / "data" / "objects", tmp_path / "backup-objects")
    # Writes after the backup: lost by the restore.
    assert shared_committer(rt).commit_once() is not None
    lost = _publish(rt, "lost", 11)
    assert shared_committer(rt).commit_once() is not None
    lost_snapshot = (await _count(rt, min_visibility_token=lost))["snapshot_id"]
    rt.close()

    code, out, err = run(
        capsys,
        "restore",
        f"--dump={dump}",
        f"--objects={tmp_path / 'backup-objects'}",
        "--token-gap=1000",
        "--snapshot-gap=100",
    )
    assert code == 0, err
    assert "tenant default: restored at snapshot 3, token 3; void: snapshots 4..103" in out

    rt = build_runtime(make_config(), dsn=catalog)
    try:
        # The lost token is refused at once, naming the void range.
        with pytest.raises(DuckMeshError) as refused:
            await _count(rt, min_visibility_token=lost)
        assert refused.value.error_code == "VISIBILITY_TOKEN_INVALID"
        assert refused.value.context["void_from"] == 4
        assert "restored from a backup" in refused.value.message
        with pytest.raises(DuckMeshError) as gone:
            await _count(rt, snapshot_id=lost_snapshot)
        assert gone.value.error_code == "SNAPSHOT_NOT_FOUND"
        # What the backup held answers as before.
        assert (await _count(rt, min_visibility_token=2))["rows"] == [[2]]
        # The record pending at the backup commits (renumbered past the gap);
        # its receipt's token waits for it and sees it.
        assert shared_committer(rt).commit_once() is not None
        seen = await _count(rt, min_visibility_token=pending)
        assert seen["rows"] == [[3]]
        assert seen["snapshot_id"] > 103
        # A retry of its key is a duplicate; new writes get new tokens and work.
        assert _publish(rt, "pending", 10) == pending + 1000
        new = _publish(rt, "after", 12)
        assert new == 1004
        assert shared_committer(rt).commit_once() is not None
        assert (await _count(rt, min_visibility_token=new))["rows"] == [[4]]
        assert all(d.equal for d in rt.db.call(replay.verify, transaction=False))
    finally:
        rt.close()
