"""A table definition as a request gives it, parsed and validated once.

``CreateTableRequest.parse`` applies every rule that needs no catalog read
(name, columns, key, compatibility, partitioning, retention) and fails with
``VALIDATION_FAILED`` naming the field; ``commands.create_table`` then checks
what does need the catalog (a live table of the same name). The API parses
at the edge; other callers may hand ``create_table`` the raw JSON object.
"""

from __future__ import annotations

from typing import Any

import attrs

from duckmesh.catalog.model import (
    COMPATIBILITY_MODES,
    Column,
    parse_columns,
    parse_partition,
    parse_retention,
)
from duckmesh.catalog.types import (
    RESERVED_TABLE_PREFIXES,
    is_identifier,
    is_reserved_table_name,
    parse_type,
)
from duckmesh.errors import DuckMeshError

_KEYS = frozenset({"name", "columns", "primary_key", "partition_by", "retention", "compatibility"})


@attrs.frozen
class CreateTableRequest:
    name: str
    columns: list[Column]  # key columns already marked not nullable
    primary_key: list[str]
    partition_by: dict[str, Any] | None
    retention: dict[str, Any] | None
    compatibility: str

    @classmethod
    def parse(cls, body: Any) -> CreateTableRequest:
        if not isinstance(body, dict):
            raise DuckMeshError("VALIDATION_FAILED", "the body must be a JSON object")
        unknown = sorted(set(body) - _KEYS)
        if unknown:
            raise DuckMeshError("VALIDATION_FAILED", f"unknown keys {unknown}", field=unknown[0])
        name = _table_name(body.get("name"))
        columns = parse_columns(body.get("columns"))
        primary_key = _primary_key(body.get("primary_key") or [], columns)
        # Key columns are never null.
        columns = [Column(c.name, c.type, False) if c.name in primary_key else c for c in columns]
        compatibility = body.get("compatibility", "backward")
        if compatibility not in COMPATIBILITY_MODES:
            raise DuckMeshError(
                "VALIDATION_FAILED",
                f"compatibility must be one of {list(COMPATIBILITY_MODES)}",
                field="compatibility",
            )
        partition = parse_partition(body.get("partition_by"))
        retention = parse_retention(body.get("retention"))
        return cls(name, columns, primary_key, partition, retention, compatibility)


def _table_name(name: Any) -> str:
    if not isinstance(name, str) or not is_identifier(name):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            "name must be an identifier (letters, digits, _; at most 63; not starting with _dm_)",
            field="name",
        )
    if is_reserved_table_name(name):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"table name {name!r} is reserved: names starting with"
            f" {', '.join(RESERVED_TABLE_PREFIXES)} (any case) are DuckDB's system catalogs",
            field="name",
            reserved_prefixes=list(RESERVED_TABLE_PREFIXES),
        )
    return name


def _primary_key(raw: Any, columns: list[Column]) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise DuckMeshError(
            "VALIDATION_FAILED", "primary_key must be an array of column names", field="primary_key"
        )
    by_name = {c.name: c for c in columns}
    missing = [p for p in raw if p not in by_name]
    if missing or len(set(raw)) != len(raw):
        raise DuckMeshError(
            "VALIDATION_FAILED",
            f"primary_key names unknown or repeated columns: {missing or raw}",
            field="primary_key",
        )
    for p in raw:
        if parse_type(by_name[p].type).kind in ("LIST", "STRUCT", "JSON"):
            raise DuckMeshError(
                "VALIDATION_FAILED", f"primary key column {p!r} must be scalar", field="primary_key"
            )
    return list(raw)
