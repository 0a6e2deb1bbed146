"""Query results kept per snapshot: a snapshot never changes, so the same SQL
and parameters on it give the same answer.

What it guarantees: an entry is found only under the exact key it was stored
with: tenant, snapshot id, the asking key's roles, the SQL text, the
parameters (JSON-encoded, so ``1``, ``1.0`` and ``true`` differ) and the row
limit; never across snapshots, tenants or roles. The bytes held (estimated
like the result-size limit, ``_convert.row_size``) stay under a process-wide
budget, least recently used first out; a result larger than an eighth of the
budget is not kept.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import attrs

from duckmesh.query._convert import row_size

__all__ = ["CacheKey", "CachedResult", "ResultCache"]

_ENTRY_OVERHEAD = 512
_MAX_PARAMS = 256
_MAX_PARAMS_CHARS = 64 * 1024


@attrs.frozen
class CacheKey:
    tenant: str
    snapshot_id: int
    roles: tuple[str, ...]
    sql: str
    params: str
    row_limit: int

    @classmethod
    def of(
        cls,
        tenant: str,
        snapshot_id: int,
        roles: frozenset[str],
        sql: str,
        params: list[Any] | None,
        row_limit: int,
    ) -> CacheKey | None:
        """The key, or None when a parameter is not a small scalar (a large or
        nested parameter would cost more to key than the cache saves)."""
        size = 0
        for value in params or ():
            if isinstance(value, str):
                size += len(value)
            elif value is not None and not isinstance(value, (bool, int, float)):
                return None
            if size > _MAX_PARAMS_CHARS or len(params or ()) > _MAX_PARAMS:
                return None
        encoded = json.dumps(params, allow_nan=True)
        return cls(tenant, snapshot_id, tuple(sorted(roles)), sql, encoded, row_limit)


@attrs.frozen
class CachedResult:
    columns: tuple[tuple[str, str], ...]
    rows: list[list[object]]
    truncated: bool
    scanned_files: int
    scanned_bytes: int
    execution_ms: float
    size: int


@attrs.frozen
class ResultCacheStatistics:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int


class ResultCache:
    """LRU by bytes; thread-safe (a one-hop query looks up in its worker thread)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, CachedResult] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey) -> CachedResult | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry

    def put(
        self,
        key: CacheKey,
        columns: tuple[tuple[str, str], ...],
        rows: list[list[object]],
        *,
        truncated: bool,
        scanned_files: int,
        scanned_bytes: int,
        execution_ms: float,
    ) -> bool:
        """Keep a result; False when it is too large to keep."""
        limit = self.max_bytes // 8
        size = _ENTRY_OVERHEAD + len(key.sql) + len(key.params)
        for row in rows:
            size += row_size(row)
            if size > limit:
                return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = CachedResult(
                columns, rows, truncated, scanned_files, scanned_bytes, execution_ms, size
            )
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
        return True

    def statistics(self) -> ResultCacheStatistics:
        with self._lock:
            return ResultCacheStatistics(
                len(self._entries), self._bytes, self.max_bytes, self._hits, self._misses
            )
