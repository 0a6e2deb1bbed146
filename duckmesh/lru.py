"""A bounded mapping that forgets its least recently used entry first.

Caches in DuckMesh (warm DuckDB databases, loaded snapshots, snapshot
lookups, SQL verdicts) share this one helper instead of each hand-rolling an
``OrderedDict``. An entry pushed out by capacity is handed to ``on_evict``
(close a database, drop a schema); entries removed with ``pop``/``clear`` are
the caller's to dispose of. Not thread-safe: callers shared with threads hold
their own lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar, overload

import attrs

__all__ = ["LRU", "LRUStatistics"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


@attrs.frozen
class LRUStatistics:
    """What a cache holds and how it has served (``get`` hits and misses)."""

    size: int
    capacity: int
    hits: int
    misses: int
    evictions: int


class LRU(Generic[K, V]):
    """At most ``capacity`` entries; ``get`` and ``put`` make an entry the most recent."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._on_evict = on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        """The value of ``key`` (now the most recent), or ``default``."""
        try:
            value = self._entries[key]
        except KeyError:
            self._misses += 1
            return default
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def peek(self, key: K) -> V | None:
        """The value of ``key`` without touching its recency or the statistics."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Set ``key`` (now the most recent); evict the oldest entries past capacity."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            old_key, old_value = self._entries.popitem(last=False)
            self._evictions += 1
            if self._on_evict is not None:
                self._on_evict(old_key, old_value)

    def pop(self, key: K) -> V | None:
        """Remove ``key`` and return its value (no ``on_evict``), or None."""
        return self._entries.pop(key, None)

    def clear(self) -> list[V]:
        """Remove every entry (no ``on_evict``); returns the values, oldest first."""
        values = list(self._entries.values())
        self._entries.clear()
        return values

    def keys(self) -> list[K]:
        """The keys, least recent first (a copy: safe to mutate the cache meanwhile)."""
        return list(self._entries)

    def values(self) -> list[V]:
        """The values, least recent first (a copy)."""
        return list(self._entries.values())

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    @property
    def capacity(self) -> int:
        return self._capacity

    def statistics(self) -> LRUStatistics:
        return LRUStatistics(
            size=len(self._entries),
            capacity=self._capacity,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
        )
