"""The ``ObjectStore`` contract: immutable objects under string keys.

Objects are written once (``put_file`` moves a finished local file into the
store atomically: readers see the whole object or nothing) and never
modified. ``local_path`` lets DuckDB read an object where it lies; a remote
backend returns a path in its local cache. ``scratch_path`` names a new
local file to write before ``put_file`` (on the same file system as the
store's local files, so the move is atomic); scratch files are never listed.
``directory`` is the private local directory holding a key prefix's objects
(where DuckDB may read them), created if missing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import attrs


@attrs.frozen
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime


class ObjectStore(Protocol):
    def put_file(self, source: Path, key: str) -> ObjectInfo: ...

    def local_path(self, key: str) -> Path: ...

    def directory(self, prefix: str) -> Path: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def scratch_dir(self) -> Path: ...

    def scratch_path(self, suffix: str = "") -> Path: ...

    def check_writable(self) -> None: ...
