"""Free disk as backpressure (ADR 0017).

Why it exists: a full disk made the embedded Postgres panic, and it could
not start again until about 16 MB were freed. Below
``DUCKMESH_MIN_FREE_DISK_BYTES`` free on the data directory's file system
(the embedded catalog and the Parquet files), ingest answers 507
``DISK_LOW`` (retryable) before it writes anything, so the catalog never
reaches a full disk through DuckMesh's own writes; queries keep working and
``/v1/ready`` reports the free space (status ``degraded`` while low).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import attrs

from duckmesh.errors import DuckMeshError

CACHE_S = 1.0  # statvfs at most once a second per process


@attrs.frozen
class DiskStatus:
    path: str
    free_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "free_bytes": self.free_bytes,
            "min_free_bytes": self.min_free_bytes,
            "low": self.low,
        }


class DiskGuard:
    """Free bytes of one directory's file system, read at most every ``CACHE_S``."""

    def __init__(self, path: Path, min_free_bytes: int) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self._last: tuple[float, int] | None = None  # (when, free bytes)

    def status(self) -> DiskStatus:
        now = time.monotonic()
        if self._last is None or now - self._last[0] > CACHE_S:
            path = self.path.resolve()
            while not path.exists() and path != path.parent:  # not created yet
                path = path.parent
            self._last = (now, shutil.disk_usage(path).free)
        return DiskStatus(str(self.path), self._last[1], self.min_free_bytes)

    def check(self) -> None:
        """Raise 507 DISK_LOW while free space is under the minimum."""
        status = self.status()
        if status.low:
            raise DuckMeshError(
                "DISK_LOW",
                f"free disk space is {status.free_bytes} bytes, below the minimum of "
                f"{status.min_free_bytes} (DUCKMESH_MIN_FREE_DISK_BYTES); retry once it is freed",
                free_bytes=status.free_bytes,
                min_free_bytes=status.min_free_bytes,
                retry_after_s=5,
            )
