"""Finished one-bucket points of closed minutes, so dashboards' repeated queries (a 24 h
chart at one-minute steps is 1,440 minutes) do not re-read and re-sketch every minute.

The aggregator is the only writer of the minute documents, so it knows exactly
when a cached minute goes stale: every flush invalidates the (endpoint, minute)
pairs it wrote, also for late entries of old minutes (a long request is logged
when it ends). A query remembers each pair's version before it reads MongoDB and
caches its result only if no flush changed that pair meanwhile. Minutes that may
still receive entries (the open ones) are never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

Pair = tuple[str, int]  # (endpoint, bucket start)


class PointCache:
    def __init__(self, max_minutes: int = 200_000):
        self._max = max_minutes
        # (endpoint, minute) -> {scope: points}; scope = a deployment name or "*" (all + total)
        self._entries: OrderedDict[Pair, dict[str, list[Any]]] = OrderedDict()
        self._versions: dict[Pair, int] = {}

    def version(self, pair: Pair) -> int:
        return self._versions.get(pair, 0)

    def get(self, pair: Pair, scope: str) -> list[Any] | None:
        entry = self._entries.get(pair)
        return None if entry is None else entry.get(scope)

    def put(self, pair: Pair, scope: str, points: list[Any], version: int) -> None:
        if self._versions.get(pair, 0) != version:
            return  # a flush wrote this minute while the query read it
        self._entries.setdefault(pair, {})[scope] = points
        self._entries.move_to_end(pair)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self._versions[pair] = self._versions.get(pair, 0) + 1
            self._entries.pop(pair, None)
