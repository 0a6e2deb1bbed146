"""The data-file layout on real Parquet and DuckDB: what a file holds, how it
is read (newest per key, deletes hidden, old files with NULL for new columns),
and how it is merged."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckmesh.query.sandbox import ColumnSpec, TableBinding, view_query
from duckmesh.storage import layout

COLUMNS = [("k", "BIGINT"), ("v", "VARCHAR")]


def _write(
    path: Path, ks: list[int], vs: list[str | None], tokens: list[int], ops: list[str]
) -> str:
    user = pa.table({"k": pa.array(ks, pa.int64()), "v": pa.array(vs, pa.string())})
    size, digest = layout.write_parquet(layout.with_system_columns(user, tokens, ops), path)
    assert size == path.stat().st_size
    assert digest == layout.sha256_file(path)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    old = tmp_path / "old.parquet"  # written before column v existed
    pq.write_table(
        layout.with_system_columns(
            pa.table({"k": pa.array([1, 2], pa.int64())}), [1, 2], ["insert"] * 2
        ),
        old,
    )
    new = _write(
        tmp_path / "new.parquet",
        [2, 3, 1],
        ["two", "three", None],
        [3, 4, 5],
        ["upsert", "insert", "delete"],
    )
    return [str(old), new]


def _rows(sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect() as conn:
        return sorted(conn.execute(sql).fetchall(), key=repr)


def test_a_file_holds_the_columns_then_the_system_columns(files: list[str]) -> None:
    schema = pq.read_schema(files[1])
    assert schema.names == ["k", "v", layout.TOKEN_COLUMN, layout.OP_COLUMN]
    assert schema.field(layout.TOKEN_COLUMN).type == pa.int64()
    assert not schema.field(layout.TOKEN_COLUMN).nullable


@pytest.mark.parametrize(
    ("primary_key", "expected"),
    [
        # Every row of both files; the old file's rows read v as NULL.
        ((), [(1, None), (1, None), (2, "two"), (2, None), (3, "three")]),
        # Key 1 was deleted, key 2 upserted.
        (("k",), [(2, "two"), (3, "three")]),
    ],
    ids=["append-only", "keyed"],
)
def test_view_sql_reads_current_columns_newest_per_key(
    files: list[str], primary_key: tuple[str, ...], expected: list[tuple[object, ...]]
) -> None:
    assert (
        _rows(layout.view_sql(COLUMNS, primary_key, files, ["k", "v"], uniform=False)) == expected
    )
    assert _rows(layout.view_sql(COLUMNS, primary_key, [], [], uniform=True)) == []


def test_the_query_sandbox_reads_through_the_layout(files: list[str]) -> None:
    binding = TableBinding(
        name="t",
        columns=tuple(ColumnSpec(n, t) for n, t in COLUMNS),
        primary_key=("k",),
        files=tuple(files),
        file_columns=("k", "v"),
    )
    assert _rows(view_query(binding)) == [(2, "two"), (3, "three")]


def test_merge_keeps_the_newest_row_per_key_and_its_tombstone(
    files: list[str], tmp_path: Path
) -> None:
    target = tmp_path / "merged.parquet"
    _rows(layout.merge_sql(COLUMNS, ("k",), files, ["k", "v"], str(target)))
    merged = pq.read_table(target).to_pylist()
    assert merged == [
        {"k": 2, "v": "two", "_dm_token": 3, "_dm_op": "upsert"},
        {"k": 3, "v": "three", "_dm_token": 4, "_dm_op": "insert"},
        {"k": 1, "v": None, "_dm_token": 5, "_dm_op": "delete"},
    ]


def test_quoting_survives_quotes_in_names_and_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's here"
    odd.mkdir()
    path = _write(odd / "f.parquet", [7], ["x"], [1], ["insert"])
    assert layout.quote_ident('we"ird') == '"we""ird"'
    assert _rows(layout.view_sql(COLUMNS, (), [path], ["k", "v"], uniform=True)) == [(7, "x")]


def test_object_keys_name_tenant_table_partition_and_snapshot() -> None:
    key = layout.object_key("acme", "log-1", "date=2026-12-01/hour=10", 42, 3)
    assert key.startswith("acme/log-1/date=2026-12-01/hour=10/part-000000000042-0003-")
    assert key.endswith(".parquet")
    assert layout.partition_dir(key) == "acme/log-1/date=2026-12-01/hour=10"
    merged = layout.compacted_key(layout.partition_dir(key), 43, 1)
    assert os.path.dirname(merged) == layout.partition_dir(key)
    assert "part-000000000043-c001-" in merged
    assert key != layout.object_key("acme", "log-1", "date=2026-12-01/hour=10", 42, 3)


def test_data_file_json_round_trip() -> None:
    when = dt.datetime(2026, 12, 1, 10, 0, 0, 1, tzinfo=dt.UTC)
    f = layout.DataFile("f", "t", "a/b.parquet", 1, 2, 3, "c" * 64, 1, 2, when, None)
    assert f.to_json()["min_event_time"] == when.isoformat()
    assert layout.DataFile.from_json(f.to_json()) == f
    assert layout.data_files([f.to_json(), f]) == [f, f]
