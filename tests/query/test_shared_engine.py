"""Tenant databases sharing one DuckDB engine (ADR 0018), and a table whose
file is unreadable when its view is built (real DuckDB and Parquet)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from duckmesh.errors import DuckMeshError
from duckmesh.query import QueryLimits, SnapshotDatabase
from duckmesh.query._engine import QueryEngine
from tests.query.test_sandbox import binding, write_parquet

LIMITS = QueryLimits(memory_limit_mb=256, threads=1, timeout_s=10)
COLS = [("id", "BIGINT")]


def _table(directory: Path, name: str, ids: list[int]) -> str:
    rows: list[tuple[object, ...]] = [(i, "insert", i) for i in ids]
    return write_parquet(directory / name / "1.parquet", COLS, rows)


def test_tenants_share_an_engine_and_see_only_their_tables(tmp_path: Path) -> None:
    engine = QueryEngine(str(tmp_path), memory_limit_mb=256, threads=1)
    databases = []
    try:
        for n in range(3):
            tenant_dir = tmp_path / f"tenant-{n}"
            events = binding("events", COLS, [_table(tenant_dir, "events", list(range(n + 1)))])
            databases.append(
                SnapshotDatabase(
                    [events], allowed_dir=str(tenant_dir), limits=LIMITS, engine=engine
                )
            )
        assert engine.databases == 3
        for n, database in enumerate(databases):
            assert database.execute("select count(*) from events", None, LIMITS).rows == [[n + 1]]
        # A binding may not point into another tenant's directory, shared engine or not.
        stolen = binding("stolen", COLS, [_table(tmp_path / "tenant-1", "x", [1])])
        with pytest.raises(ValueError, match="not under the data dir"):
            databases[0].add_snapshot(2, [stolen])
        # The engine itself reads nothing outside the data root.
        raw = engine.cursor()
        try:
            with pytest.raises(duckdb.PermissionException):
                raw.execute("SELECT * FROM read_text('/etc/passwd')").fetchall()
            with pytest.raises(duckdb.InvalidInputException):
                raw.execute("SET enable_external_access = true")
        finally:
            raw.close()
        databases.pop().close()
        assert engine.databases == 2
        assert databases[1].execute("select sum(id) from events", None, LIMITS).rows == [[1]]
    finally:
        for database in databases:
            database.close()
        engine.close()


def test_unreadable_file_leaves_only_its_table_out(tmp_path: Path) -> None:
    tenant_dir = tmp_path / "tenant"
    damaged = _table(tenant_dir, "a", [1, 2, 3])
    with open(damaged, "r+b") as f:
        f.truncate(Path(damaged).stat().st_size // 2)
    tables = [
        binding("a", COLS, [damaged]),
        binding("b", COLS, [_table(tenant_dir, "b", [1, 2])]),
    ]
    database = SnapshotDatabase(tables, allowed_dir=str(tenant_dir), limits=LIMITS)
    try:
        assert database.execute("select count(*) from b", None, LIMITS).rows == [[2]]
        assert database.execute("select 1", None, LIMITS).rows == [[1]]
        with pytest.raises(DuckMeshError) as info:
            database.execute("select * from a", None, LIMITS)
        assert info.value.error_code == "DATA_FILE_CORRUPT"
        assert info.value.context == {"table": "a", "file": "tenant/a/1.parquet"}
        assert str(tmp_path) not in info.value.message
    finally:
        database.close()
