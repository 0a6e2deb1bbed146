"""Private files (issue 14, hole 5): the data directory and everything
DuckMesh writes under it are readable by the owner only; older, looser data
directories are tightened on start; running as root is warned about."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

from duckmesh.config import Config
from duckmesh.files import prepare_data_dir, tighten_entry, warn_if_root
from duckmesh.runtime import build_runtime, migrate_and_bootstrap
from tests.fixtures import start_server

LOG = {"name": "log", "columns": [{"name": "id", "type": "BIGINT"}]}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _loose_entries(root: Path) -> list[str]:
    """Every directory not 0700 and every file not 0600 under ``root``."""
    bad = [] if _mode(root) == 0o700 else [f"{root} {oct(_mode(root))}"]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath) / name
            if _mode(path) != 0o700:
                bad.append(f"{path} {oct(_mode(path))}")
        for name in filenames:
            path = Path(dirpath) / name
            if _mode(path) != 0o600:
                bad.append(f"{path} {oct(_mode(path))}")
    return bad


async def test_everything_written_is_private(
    make_config: Callable[..., Config], dsn: str, nursery: trio.Nursery
) -> None:
    old_umask = os.umask(0o022)  # the usual umask: modes must not depend on it
    rt = build_runtime(make_config(compaction_min_files=2), dsn=dsn)
    migrate_and_bootstrap(rt)
    server = await start_server(rt, nursery)
    try:
        await server.create_table(LOG)
        for i in range(3):
            record = {"idempotency_key": f"k{i}", "payload": {"id": i}}
            r = await server.ingest("log", [record], wait_for_visibility=True)
            assert r.status_code == 200, r.text
        r = await server.client.post("/v1/compaction/run")
        assert r.status_code == 200, r.text
        assert (await server.query("select count(*) from log")).json()["rows"] == [[3]]
    finally:
        await server.client.aclose()
        assert rt.root is not None
        await rt.root.stop()
        rt.close()
        os.umask(old_umask)
    parquet = list(rt.config.data_dir.rglob("*.parquet"))
    assert len(parquet) >= 4  # three commits and the compaction's output
    assert _loose_entries(rt.config.data_dir) == []


def test_a_loose_data_directory_is_tightened_on_start(
    make_config: Callable[..., Config], dsn: str
) -> None:
    config = make_config()
    old = config.data_dir / "objects" / "default" / "log"
    old.mkdir(parents=True)
    (old / "part.parquet").write_bytes(b"x")
    for path in (config.data_dir, config.data_dir / "objects", old.parent, old):
        path.chmod(0o755)
    (old / "part.parquet").chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        rt = build_runtime(config, dsn=dsn)
    rt.close()
    assert _loose_entries(config.data_dir) == []
    tightened = [e for e in logs if e["event"] == "tightened file modes in the data directory"]
    assert len(tightened) == 1
    assert tightened[0]["log_level"] == "warning"
    assert tightened[0]["entries"] == 5
    with structlog.testing.capture_logs() as logs:  # already private: nothing to say
        build_runtime(config, dsn=dsn).close()
    assert not [e for e in logs if e["event"].startswith("tightened")]


def test_running_as_root_is_a_warning(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        assert warn_if_root(tmp_path) is (os.geteuid() == 0)
    warned = [e for e in logs if e["event"].startswith("running as root")]
    assert len(warned) == (1 if os.geteuid() == 0 else 0)
    assert all(e["log_level"] == "warning" for e in warned)


def test_a_new_data_directory_is_private(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path / "a" / "data", embedded_postgres=False)
    assert _mode(tmp_path / "a") == 0o700  # created by us, so ours to close
    assert _mode(tmp_path / "a" / "data") == 0o700


def test_an_entry_deleted_while_tightening_is_skipped(tmp_path: Path) -> None:
    """Other processes of the group delete probe and scratch files while a
    restarted child walks the tree (a CI failure); a vanished entry is not
    an error, a present loose one is still tightened."""
    gone = tmp_path / "gone.probe"
    assert tighten_entry(str(gone), 0o600) == 0
    loose = tmp_path / "loose"
    loose.write_text("x")
    loose.chmod(0o644)
    assert tighten_entry(str(loose), 0o600) == 1
    assert _mode(loose) == 0o600
    assert tighten_entry(str(loose), 0o600) == 0
