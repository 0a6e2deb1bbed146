"""The data-file layout: what a DuckMesh Parquet file is and how it is read.

Everything that writes or reads data files takes its knowledge from here:

- every file holds the table's columns plus two system columns,
  ``_dm_token`` (the record's visibility token) and ``_dm_op`` (insert,
  upsert or delete); a keyed table's current row is the one with the highest
  token per key, and a ``delete`` is a tombstone that hides older versions;
- object keys: ``<tenant>/<table_id>/<partition>/part-<snapshot>-<seq>-<rand>.parquet``;
- zstd-compressed Parquet with statistics, identified by its SHA-256;
- ``DataFile``: the description of one written file as the catalog records
  it (the ``files_added`` of a ``SnapshotPublished`` event);
- the DuckDB SQL that reads a set of files with a table's current schema.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

SYSTEM_COLUMN_PREFIX = "_dm_"
TOKEN_COLUMN = "_dm_token"  # noqa: S105 (a column name, not a secret)
OP_COLUMN = "_dm_op"
DELETE_OP = "delete"


def _when(value: dt.datetime | str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


@attrs.frozen
class DataFile:
    """One written data file as a snapshot adds it (an event's payload).

    Its JSON form (``to_json``/``from_json``) is the one stored in the event
    log since the first release: event times are ISO 8601 text or absent.
    """

    file_id: str
    table_id: str
    path: str  # object-store key
    schema_version: int
    record_count: int
    size_bytes: int
    checksum: str  # hex SHA-256 of the file
    min_token: int
    max_token: int
    min_event_time: dt.datetime | None = attrs.field(default=None, converter=_when)
    max_event_time: dt.datetime | None = attrs.field(default=None, converter=_when)

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        for name in ("min_event_time", "max_event_time"):
            value = out[name]
            out[name] = value.isoformat() if value is not None else None
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DataFile:
        return cls(**{f.name: raw[f.name] for f in attrs.fields(cls) if f.name in raw})


def data_files(values: Iterable[DataFile | Mapping[str, Any]]) -> list[DataFile]:
    """``DataFile`` objects from objects or their JSON form (event decoding)."""
    return [v if isinstance(v, DataFile) else DataFile.from_json(v) for v in values]


def new_file_id() -> str:
    return secrets.token_hex(8)


def object_key(tenant_id: str, table_id: str, partition: str, snapshot_id: int, seq: int) -> str:
    """The key of a file a commit writes for ``snapshot_id``."""
    return (
        f"{tenant_id}/{table_id}/{partition}/"
        f"part-{snapshot_id:012d}-{seq:04d}-{secrets.token_hex(4)}.parquet"
    )


def compacted_key(partition_dir: str, snapshot_id: int, seq: int) -> str:
    """The key of a file compaction writes into an existing partition directory."""
    return f"{partition_dir}/part-{snapshot_id:012d}-c{seq:03d}-{secrets.token_hex(4)}.parquet"


def partition_dir(key: str) -> str:
    """The directory (tenant/table/partition) of an object key."""
    return os.path.dirname(key)


def file_schema(user: pa.Schema) -> pa.Schema:
    """The Arrow schema of a data file: the table's columns, then the system columns."""
    return user.append(pa.field(TOKEN_COLUMN, pa.int64(), nullable=False)).append(
        pa.field(OP_COLUMN, pa.string(), nullable=False)
    )


def with_system_columns(user: pa.Table, tokens: Sequence[int], ops: Sequence[str]) -> pa.Table:
    """``user`` rows with their tokens and ops appended (the file's schema)."""
    schema = file_schema(user.schema)
    return user.append_column(
        schema.field(TOKEN_COLUMN), pa.array(tokens, pa.int64())
    ).append_column(schema.field(OP_COLUMN), pa.array(ops, pa.string()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_parquet(arrow: pa.Table, path: Path) -> tuple[int, str]:
    """Write zstd-compressed Parquet with statistics; returns (size, sha256)."""
    pq.write_table(arrow, path, compression="zstd", write_statistics=True)
    return path.stat().st_size, sha256_file(path)


# --- SQL that reads data files (DuckDB) -------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cast_projection(columns: Sequence[tuple[str, str]], present: Iterable[str]) -> str:
    """``CAST(col AS type) AS col`` for each (name, type); a column the files
    do not have (added later) reads as NULL. ``present`` is case-insensitive."""
    have = {name.lower() for name in present}
    return ", ".join(
        f"CAST({quote_ident(name) if name.lower() in have else 'NULL'} AS {type_})"
        f" AS {quote_ident(name)}"
        for name, type_ in columns
    )


def read_parquet_sql(paths: Sequence[str], *, union_by_name: bool) -> str:
    """A ``read_parquet`` table function over ``paths`` (union by name when
    the files may have been written with different schema versions)."""
    files = ", ".join(quote_literal(p) for p in paths)
    return f"read_parquet([{files}]{', union_by_name = true' if union_by_name else ''})"


def newest_per_key(primary_key: Sequence[str]) -> str:
    """The QUALIFY clause keeping the highest-token row per key (tombstones too)."""
    keys = ", ".join(quote_ident(k) for k in primary_key)
    return (
        f"QUALIFY row_number() OVER (PARTITION BY {keys}"
        f" ORDER BY {quote_ident(TOKEN_COLUMN)} DESC) = 1"
    )


def view_sql(
    columns: Sequence[tuple[str, str]],
    primary_key: Sequence[str],
    paths: Sequence[str],
    present: Iterable[str],
    *,
    uniform: bool,
) -> str:
    """The SELECT a table reads as over ``paths``: current columns only, the
    newest version per key with deletes hidden, no system columns.

    ``uniform`` says every file has exactly the current schema (no casts and
    no union by name needed)."""
    if not paths:
        nulls = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(n)}" for n, t in columns)
        return f"SELECT {nulls} WHERE false"
    if uniform:
        projection = ", ".join(quote_ident(name) for name, _ in columns)
    else:
        projection = cast_projection(columns, present)
    source = read_parquet_sql(paths, union_by_name=not uniform)
    if not primary_key:
        return f"SELECT {projection} FROM {source}"
    return (
        f"SELECT {projection} FROM (SELECT * FROM {source} {newest_per_key(primary_key)})"
        f" AS latest WHERE latest.{quote_ident(OP_COLUMN)} <> {quote_literal(DELETE_OP)}"
    )


def merge_sql(
    columns: Sequence[tuple[str, str]],
    primary_key: Sequence[str],
    paths: Sequence[str],
    present: Iterable[str],
    target: str,
) -> str:
    """One COPY rewriting ``paths`` as one file at ``target`` with the current
    schema, keeping the system columns and, for a keyed table, the newest row
    per key (tombstones included: they must keep hiding older files' rows)."""
    query = (
        f"SELECT {cast_projection(columns, present)}, {TOKEN_COLUMN}, {OP_COLUMN}"
        f" FROM {read_parquet_sql(paths, union_by_name=True)}"
    )
    if primary_key:
        query += f" {newest_per_key(primary_key)}"
    return (
        f"COPY ({query} ORDER BY {TOKEN_COLUMN}) TO {quote_literal(target)}"
        " (FORMAT parquet, COMPRESSION zstd)"
    )
