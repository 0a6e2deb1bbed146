"""duckmesh.lru: eviction order, capacity, the on-evict callback and statistics."""

from __future__ import annotations

import attrs
import pytest

from duckmesh.lru import LRU, LRUStatistics


def test_capacity_evicts_the_least_recently_used_first() -> None:
    evicted: list[tuple[str, int]] = []
    cache: LRU[str, int] = LRU(2, on_evict=lambda k, v: evicted.append((k, v)))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recent
    cache.put("c", 3)
    assert evicted == [("b", 2)]
    assert cache.keys() == ["a", "c"]
    assert "b" not in cache
    assert len(cache) == 2


def test_put_of_an_existing_key_refreshes_it_without_evicting() -> None:
    evicted: list[str] = []
    cache: LRU[str, int] = LRU(2, on_evict=lambda k, _: evicted.append(k))
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    assert evicted == []
    assert cache.keys() == ["b", "a"]
    cache.put("c", 3)
    assert evicted == ["b"]
    assert cache.peek("a") == 10


def test_peek_touches_neither_recency_nor_statistics() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.peek("a") == 1
    assert cache.peek("zz") is None
    cache.put("c", 3)
    assert cache.keys() == ["b", "c"]  # "a" was still the least recent
    assert cache.statistics().hits == cache.statistics().misses == 0


def test_pop_and_clear_hand_back_values_without_the_callback() -> None:
    evicted: list[str] = []
    cache: LRU[str, int] = LRU(3, on_evict=lambda k, _: evicted.append(k))
    for i, key in enumerate("abc"):
        cache.put(key, i)
    assert cache.pop("b") == 1
    assert cache.pop("b") is None
    assert cache.clear() == [0, 2]
    assert len(cache) == 0
    assert evicted == []
    assert cache.statistics().evictions == 0


def test_statistics_count_hits_misses_and_evictions() -> None:
    cache: LRU[int, str] = LRU(1)
    assert cache.get(1) is None
    assert cache.get(1, "fallback") == "fallback"
    cache.put(1, "one")
    assert cache.get(1) == "one"
    cache.put(2, "two")
    cache.put(3, "three")
    stats = cache.statistics()
    assert stats == LRUStatistics(size=1, capacity=1, hits=1, misses=2, evictions=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.hits = 5  # type: ignore[misc]


def test_iteration_is_a_snapshot_of_the_keys_oldest_first() -> None:
    cache: LRU[int, int] = LRU(4)
    for i in range(4):
        cache.put(i, i * i)
    for key in cache:  # removing while iterating is safe
        if key % 2:
            cache.pop(key)
    assert list(cache) == [0, 2]
    assert cache.values() == [0, 4]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LRU[str, int](0)
    assert LRU[str, int](5).capacity == 5
