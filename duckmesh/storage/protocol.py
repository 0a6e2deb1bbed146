"""The ``ObjectStore`` contract: immutable objects under string keys.

Objects are written once (``put_file`` moves a finished local file into the
store atomically: readers see the whole object or nothing) and never
modified. ``local_path`` lets DuckDB read an object where it lies; a remote
backend returns a path in its local cache. ``scratch_path`` names a new
local file to write before ``put_file`` (on the same file system as the
store's local files, so the move is atomic); scratch files are never listed.
``directory`` is the private local directory holding a key prefix's objects
(where DuckDB may read them), created if missing.

A key names one object forever: ``put_file`` refuses a key that exists.
``checksum`` is the SHA-256 the store recorded at write, when it keeps one
(the S3 backend does; the local one answers None and the integrity checker
hashes the file). ``local_paths`` resolves many keys at once (a remote
backend downloads the missing ones in parallel into its cache).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from duckmesh.errors import DuckMeshError


@attrs.frozen
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime


class ObjectStoreUnavailable(DuckMeshError):
    """The remote store did not answer (after the client's retries): retryable."""

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(
            "OBJECT_STORE_UNAVAILABLE",
            f"the object store is unavailable ({op}); retry later",
            op=op,
        )
        self.reason = reason


def check_key(key: str) -> list[str]:
    """The parts of a valid key; ``ValueError`` if it could escape the store.

    A lexical check, not resolve(): keys are ours, and this runs once per
    file per snapshot load (hundreds of calls), so no syscalls here."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object key escapes the store: {key!r}")
    return parts


class ObjectStore(Protocol):
    def put_file(self, source: Path, key: str, checksum: str | None = None) -> ObjectInfo: ...

    def local_path(self, key: str) -> Path: ...

    def local_paths(self, keys: Sequence[str]) -> list[Path]: ...

    def checksum(self, key: str) -> str | None: ...

    def directory(self, prefix: str) -> Path: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> bool: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def scratch_dir(self) -> Path: ...

    def scratch_path(self, suffix: str = "") -> Path: ...

    def check_writable(self) -> None: ...
