"""Table bindings of a snapshot: which Parquet files and columns each view reads.

Built from catalog rows (tables as of the snapshot, its live data files) for
``SnapshotDatabase.add_snapshot``; files are named by their local path
(``_local_files``: in the object cache when the store is remote).
"""

from __future__ import annotations

from pathlib import Path

from duckmesh.catalog import reads
from duckmesh.catalog.model import DataFile, TableDef
from duckmesh.db import Conn
from duckmesh.query.sandbox import ColumnSpec, TableBinding
from duckmesh.storage.protocol import ObjectStore


def _local_files(store: ObjectStore, keys: list[str]) -> dict[str, str]:
    """Each object's local path for DuckDB: the file itself (local store) or
    its copy in the object cache, missing ones downloaded in parallel (S3).
    An object gone from the store itself is named by the (absent) path of its
    copy: its table answers DATA_FILE_CORRUPT, the snapshot's others work."""
    try:
        paths = store.local_paths(keys)
    except FileNotFoundError:
        paths = [_local_or_absent(store, key) for key in keys]
    return {key: str(path) for key, path in zip(keys, paths, strict=True)}


def _local_or_absent(store: ObjectStore, key: str) -> Path:
    try:
        return store.local_path(key)
    except FileNotFoundError:
        prefix, _, name = key.rpartition("/")
        return store.directory(prefix) / name


def table_bindings(
    store: ObjectStore, conn: Conn, tables: list[TableDef], files: list[DataFile]
) -> list[TableBinding]:
    by_table: dict[str, list[DataFile]] = {}
    for f in files:
        by_table.setdefault(f.table_id, []).append(f)
    newest = {
        t.table_id: max((f.schema_version for f in by_table.get(t.table_id, [])), default=0)
        for t in tables
    }
    # Files written with the table's current schema (the usual case) need no
    # lookup; older ones are resolved for all tables in one query.
    older = reads.column_names(
        conn,
        {
            (t.table_id, newest[t.table_id])
            for t in tables
            if 0 < newest[t.table_id] != t.schema_version
        },
    )
    local = _local_files(store, [f.path for f in files])
    out = []
    for table in tables:
        mine = by_table.get(table.table_id, [])
        version = newest[table.table_id]
        if version == table.schema_version:
            present = {c.name for c in table.columns}
        else:
            present = older.get((table.table_id, version), set())
        out.append(
            TableBinding(
                name=table.name,
                columns=tuple(ColumnSpec(c.name, c.type, c.nullable) for c in table.columns),
                primary_key=table.primary_key,
                files=tuple(local[f.path] for f in mine),
                file_columns=tuple(c.name for c in table.columns if c.name in present),
                total_bytes=sum(f.size_bytes for f in mine),
                uniform=all(f.schema_version == table.schema_version for f in mine),
            )
        )
    return out
