"""Moves the open buckets to MongoDB every `flush_interval_s`, retrying without loss.

Each take of the open buckets becomes one flush with its own id; a flush that
fails stays queued and is retried with the same id (MetricsStore.write is
idempotent per id), so a lost reply never double-counts. If MongoDB stays away
past `max_pending_buckets`, the oldest flushes are dropped and counted.
"""

from __future__ import annotations

import asyncio
from collections import deque

from sluice.common.log import get_logger
from sluice.metrics.buckets import Bucket, BucketKey, Buckets
from sluice.metrics.cache import PointCache
from sluice.metrics.store import MetricsStore, new_flush_id

log = get_logger(__name__)


class Flusher:
    def __init__(
        self,
        buckets: Buckets,
        store: MetricsStore,
        *,
        interval_s: float,
        max_pending: int,
        cache: PointCache | None = None,
    ):
        self._buckets = buckets
        self._cache = cache
        self._store = store
        self._interval = interval_s
        self._max_pending = max_pending
        self._pending: deque[tuple[str, dict[BucketKey, Bucket]]] = deque()
        self.flushes = 0
        self.failures = 0
        self.dropped_buckets = 0

    def pending_buckets(self) -> int:
        return sum(len(b) for _, b in self._pending)

    async def flush(self) -> None:
        """Take what is open and write everything queued, oldest first."""
        taken = self._buckets.take()
        if taken:
            self._pending.append((new_flush_id(), taken))
        while self.pending_buckets() > self._max_pending and len(self._pending) > 1:
            _, dropped = self._pending.popleft()
            self.dropped_buckets += len(dropped)
            log.error("metrics_dropped", buckets=len(dropped), reason="MongoDB unavailable")
        while self._pending:
            flush_id, buckets = self._pending[0]
            if self._cache is not None:  # before and after: no query caches a half-state
                self._cache.invalidate({(k[0], k[2]) for k in buckets})
            await self._store.write(flush_id, buckets)
            if self._cache is not None:
                self._cache.invalidate({(k[0], k[2]) for k in buckets})
            self._pending.popleft()
            self.flushes += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # any database error: keep the data, try again
                self.failures += 1
                log.warning("metrics_flush_failed", error=str(exc), pending=self.pending_buckets())

    async def close(self) -> None:
        """Last flush on a clean stop: a restart then loses nothing at all."""
        try:
            await self.flush()
        except Exception as exc:
            log.error("metrics_final_flush_failed", error=str(exc), lost=self.pending_buckets())
