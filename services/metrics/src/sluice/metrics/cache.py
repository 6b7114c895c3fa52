"""Finished one-bucket points of closed minutes, so dashboards' repeated queries (a 24 h
chart at one-minute steps is 1,440 minutes) do not re-read and re-sketch every minute.

The aggregator is the only writer of the minute documents, so it knows exactly
when a cached minute goes stale: every flush invalidates the (endpoint, minute)
pairs it wrote, also for late entries of old minutes (a long request is logged
when it ends). A query takes a ticket (the count of invalidations so far) before it
reads MongoDB and caches its result only if no flush changed that pair since.
Minutes that may still receive entries (the open ones) are never cached.

What is remembered is bounded: the pairs last invalidated (at most `max_dirty`, the
least recently flushed forgotten first) and the cached minutes (`max_minutes`, least
recently cached first). A forgotten pair counts as flushed when the newest forgotten
one was, so a query still reading from before that caches nothing it cannot trust; one
version per pair kept forever grew by one entry per endpoint-minute (about 1 GB a year
for 10 endpoints).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

Pair = tuple[str, int]  # (endpoint, bucket start)


class PointCache:
    def __init__(self, max_minutes: int = 200_000, max_dirty: int = 50_000):
        self._max = max_minutes
        self._max_dirty = max_dirty
        # (endpoint, minute) -> {scope: points}; scope = a deployment name or "*" (all + total)
        self._entries: OrderedDict[Pair, dict[str, list[Any]]] = OrderedDict()
        self._flushes = 0  # invalidations so far: a query's ticket
        # (endpoint, minute) -> the ticket of its last invalidation, least recent first
        self._dirty: OrderedDict[Pair, int] = OrderedDict()
        self._forgotten = 0  # the most recent ticket of a pair dropped from `_dirty`

    def version(self, pair: Pair) -> int:
        """The ticket a query takes before it reads `pair` (any pair: one counter)."""
        return self._flushes

    def get(self, pair: Pair, scope: str) -> list[Any] | None:
        entry = self._entries.get(pair)
        return None if entry is None else entry.get(scope)

    def put(self, pair: Pair, scope: str, points: list[Any], version: int) -> None:
        """Cache `points`, read with ticket `version`, unless a flush wrote the minute since."""
        if self._dirty.get(pair, self._forgotten) > version:
            return  # a flush wrote this minute while the query read it
        self._entries.setdefault(pair, {})[scope] = points
        self._entries.move_to_end(pair)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def invalidate(self, pairs: Iterable[Pair]) -> None:
        self._flushes += 1
        for pair in pairs:
            self._dirty[pair] = self._flushes
            self._dirty.move_to_end(pair)
            self._entries.pop(pair, None)
        while len(self._dirty) > self._max_dirty:
            _, ticket = self._dirty.popitem(last=False)
            self._forgotten = max(self._forgotten, ticket)
