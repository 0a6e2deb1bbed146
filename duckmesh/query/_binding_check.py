"""The checks a table binding passes before it becomes a view: sound names and
types, and every file inside the tenant's directory, named without glob
characters (a view reads exactly the files it names, and only the tenant's)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from duckmesh.storage.layout import SYSTEM_COLUMN_PREFIX

if TYPE_CHECKING:
    from duckmesh.query.sandbox import TableBinding

__all__ = ["validate_binding"]

_GLOB_CHARACTERS = frozenset("*?[]{}")


def validate_binding(binding: TableBinding, allowed_dir: str) -> None:
    where = f"table binding {binding.name!r}"
    if not binding.name or "\x00" in binding.name:
        raise ValueError(f"{where}: invalid table name")
    if not binding.columns:
        raise ValueError(f"{where}: a table needs at least one column")
    names = [column.name.lower() for column in binding.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate column names")
    for column in binding.columns:
        if not column.name or column.name.lower().startswith(SYSTEM_COLUMN_PREFIX):
            raise ValueError(f"{where}: invalid column name {column.name!r}")
        if not column.type.strip() or any(ch in column.type for ch in ";\x00"):
            raise ValueError(f"{where}: invalid type {column.type!r}")
    missing = [key for key in binding.primary_key if key.lower() not in names]
    if missing:
        raise ValueError(f"{where}: primary key columns {missing} are not columns")
    present = {name.lower() for name in binding.file_columns}
    if binding.files and any(key.lower() not in present for key in binding.primary_key):
        raise ValueError(f"{where}: primary key columns must be present in the files")
    root = allowed_dir.rstrip(os.sep) + os.sep
    for path in binding.files:
        if not os.path.isabs(path) or not os.path.abspath(path).startswith(root):
            raise ValueError(f"{where}: file {path!r} is not under the data dir")
        if any(ch in path for ch in _GLOB_CHARACTERS):
            raise ValueError(f"{where}: file path contains glob characters")
