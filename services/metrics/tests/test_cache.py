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
