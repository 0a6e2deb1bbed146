"""The ``ObjectStore`` contract: immutable objects under string keys.

Objects are written once (``put_file`` moves a finished local file into the
store atomically: readers see the whole object or nothing) and never
modified. ``local_path`` lets DuckDB read an object where it lies; a remote
backend returns a path in its local cache.
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

    def stat(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def scratch_dir(self) -> Path: ...

    def check_writable(self) -> None: ...
