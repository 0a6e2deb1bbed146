"""Catalog read models: tenants, keys, tables, snapshots, files.

Plain frozen attrs classes built from projection rows, with the validation
of table definitions (names, types, keys, retention) in one place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs

from duckmesh.catalog.types import ColumnType, is_identifier, parse_type
from duckmesh.errors import DuckMeshError

ROLES = ("ingest_writer", "query_reader", "table_admin", "ops_admin")
COMPATIBILITY_MODES = ("backward",)
PARTITION_GRANULARITIES = ("hour", "day")


@attrs.frozen
class Column:
    name: str
    type: str  # canonical DuckDB spelling
    nullable: bool = True

    @property
    def parsed(self) -> ColumnType:
        return parse_type(self.type)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "nullable": self.nullable}


@attrs.frozen
class TableDef:
    table_id: str
    tenant_id: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    partition_by: dict[str, Any] | None
    retention: dict[str, Any] | None
    compatibility: str
    schema_version: int
    created_at: dt.datetime

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "table_id": self.table_id,
            "columns": [c.to_json() for c in self.columns],
            "primary_key": list(self.primary_key),
            "partition_by": self.partition_by,
            "retention": self.retention,
            "compatibility": self.compatibility,
            "schema_version": self.schema_version,
            "created_at": self.created_at.isoformat(),
        }


def _bad(message: str, **context: Any) -> DuckMeshError:
    return DuckMeshError("VALIDATION_FAILED", message, **context)


def parse_column(raw: Any, where: str) -> Column:
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object with name and type", field=where)
    unknown = set(raw) - {"name", "type", "nullable"}
    if unknown:
        raise _bad(f"{where} has unknown keys {sorted(unknown)}", field=where)
    name, type_text, nullable = raw.get("name"), raw.get("type"), raw.get("nullable", True)
    if not isinstance(name, str) or not is_identifier(name):
        raise _bad(
            f"{where}.name must be an identifier (letters, digits, _; not starting with _dm_)",
            field=f"{where}.name",
        )
    if not isinstance(type_text, str):
        raise _bad(f"{where}.type must be a DuckDB type name", field=f"{where}.type")
    if not isinstance(nullable, bool):
        raise _bad(f"{where}.nullable must be true or false", field=f"{where}.nullable")
    try:
        parsed = parse_type(type_text)
    except ValueError as exc:
        raise _bad(f"{where}.type: {exc}", field=f"{where}.type") from None
    return Column(name=name, type=parsed.render(), nullable=nullable)


def parse_columns(raw: Any, where: str = "columns") -> list[Column]:
    if not isinstance(raw, list) or not raw:
        raise _bad(f"{where} must be a non-empty array", field=where)
    columns = [parse_column(c, f"{where}[{i}]") for i, c in enumerate(raw)]
    # Case-insensitive, as DuckDB resolves column names ("id" and "ID" collide).
    names = [c.name.lower() for c in columns]
    dupes = sorted({c.name for c in columns if names.count(c.name.lower()) > 1})
    if dupes:
        raise _bad(f"duplicate column names {dupes}", field=where)
    return columns


def parse_retention(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"max_age_days"}
        or type(raw["max_age_days"]) is not int
        or raw["max_age_days"] < 1
    ):
        raise _bad('retention must be null or {"max_age_days": N} with N >= 1', field="retention")
    return {"max_age_days": raw["max_age_days"]}


def parse_partition(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, dict)
        or set(raw) != {"event_time"}
        or raw["event_time"] not in PARTITION_GRANULARITIES
    ):
        raise _bad(
            'partition_by must be null or {"event_time": "hour"|"day"}', field="partition_by"
        )
    return {"event_time": raw["event_time"]}


@attrs.frozen
class Snapshot:
    tenant_id: str
    snapshot_id: int
    kind: str
    created_at: dt.datetime
    created_by: str
    max_visibility_token: int
    parent_id: int | None
    expired: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "max_visibility_token": self.max_visibility_token,
            "parent_id": self.parent_id,
            "expired": self.expired,
        }


@attrs.frozen
class DataFile:
    file_id: str
    table_id: str
    path: str  # object-store key
    schema_version: int
    record_count: int
    size_bytes: int
    checksum: str
    min_token: int
    max_token: int
    added_in: int
    removed_in: int | None
    min_event_time: dt.datetime | None = None
    max_event_time: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "table_id": self.table_id,
            "path": self.path,
            "record_count": self.record_count,
            "size_bytes": self.size_bytes,
            "schema_version": self.schema_version,
            "min_token": self.min_token,
            "max_token": self.max_token,
        }
