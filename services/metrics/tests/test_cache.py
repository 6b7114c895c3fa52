"""The point cache never serves a minute a flush changed, even one written mid-query."""

from __future__ import annotations

from sluice.metrics.cache import PointCache


def test_a_flush_invalidates_and_a_racing_query_does_not_cache_stale_points() -> None:
    cache = PointCache()
    pair = ("shop", 1_700_000_040)
    version = cache.version(pair)
    cache.put(pair, "blue", ["p1"], version)
    assert cache.get(pair, "blue") == ["p1"]
    assert cache.get(pair, "*") is None  # another scope of the same minute

    cache.invalidate([pair])  # a late entry of that minute was flushed
    assert cache.get(pair, "blue") is None

    started = cache.version(pair)  # a query reads MongoDB ...
    cache.invalidate([pair])  # ... while a flush writes the minute
    cache.put(pair, "blue", ["stale"], started)
    assert cache.get(pair, "blue") is None


def test_the_cache_is_bounded() -> None:
    cache = PointCache(max_minutes=2)
    for minute in (0, 60, 120):
        cache.put(("shop", minute), "*", [minute], 0)
    assert cache.get(("shop", 0), "*") is None
    assert cache.get(("shop", 120), "*") == [120]


def test_what_the_cache_remembers_of_flushes_is_bounded() -> None:
    """One version per (endpoint, minute) kept forever grew by one entry per endpoint-minute
    (about 1 GB a year of uptime for 10 endpoints)."""
    cache = PointCache()
    for minute in range(0, 100_000 * 60, 60):  # 100,000 distinct minutes flushed
        cache.invalidate([("shop", minute)])
    assert len(cache._dirty) <= 50_000
    # The minutes it still remembers are the recent ones, and they still cache.
    recent = ("shop", (100_000 - 1) * 60)
    cache.put(recent, "*", ["p"], cache.version(recent))
    assert cache.get(recent, "*") == ["p"]


def test_a_query_racing_a_forgotten_flush_caches_nothing_stale() -> None:
    cache = PointCache(max_dirty=2)
    old = ("shop", 0)
    started = cache.version(old)  # a query reads MongoDB ...
    cache.invalidate([old])  # ... while a flush writes the minute
    cache.invalidate([("shop", 60)])
    cache.invalidate([("shop", 120)])  # ... and later flushes push it out of memory
    cache.put(old, "*", ["stale"], started)
    assert cache.get(old, "*") is None
    cache.put(old, "*", ["fresh"], cache.version(old))  # a query started after them
    assert cache.get(old, "*") == ["fresh"]
