"""Costs from `instance_history`: each instance's real start/stop times x its hourly price.

The provisioner writes one document per instance when it starts
(`started_at`, `instance_type`, `price_per_hour`) and sets `stopped_at` when it
stops (also for instances it finds orphaned after its own restart). Costs are
therefore recomputed from the record every time: nothing here is state that a
restart of this service could lose or count twice; an instance still running
counts up to the end of the window (at most now).

Other compute is priced the same way: the batch runner writes one record per
worker with `kind: "batch"` (endpoint and deployment being the batch ones), which
shows up as its own line; a worker is `instance_share` of an instance (one of its
max_concurrency_per_instance), so its time counts for that share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.mongo import Document

INSTANCE_HISTORY = "instance_history"  # written by sluice.provisioner.store


@dataclass
class CostLine:
    endpoint: str
    deployment: str
    instance_type: str
    hourly_price: float
    kind: str
    seconds: float = 0.0
    running_share: float = 0.0  # instances (or parts of one) running at the window's end

    @property
    def running(self) -> int:
        """Instances running: one whose any worker still runs counts."""
        return math.ceil(round(self.running_share, 6))

    @property
    def instance_hours(self) -> float:
        return self.seconds / 3600

    @property
    def cost(self) -> float:
        return self.instance_hours * self.hourly_price


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


def cost_lines(
    records: Iterable[Mapping[str, Any]], start: datetime, end: datetime, now: datetime
) -> list[CostLine]:
    """One line per (endpoint, deployment, instance type, price, kind), sorted."""
    lines: dict[tuple[str, str, str, float, str], CostLine] = {}
    until = min(end, now)
    for rec in records:
        started = _time(rec["started_at"])
        if started is None:
            continue
        stopped = _time(rec.get("stopped_at"))
        overlap = (min(stopped or until, until) - max(started, start)).total_seconds()
        price = float(rec.get("price_per_hour", 0.0))
        share = float(rec.get("instance_share", 1.0))
        key = (
            str(rec["endpoint"]),
            str(rec["deployment"]),
            str(rec.get("instance_type", "")),
            price,
            str(rec.get("kind", "online")),
        )
        line = lines.get(key)
        if line is None:
            line = lines[key] = CostLine(*key)
        line.seconds += max(0.0, overlap) * share
        if started <= until and (stopped is None or stopped > until):
            line.running_share += share
    return [lines[k] for k in sorted(lines)]


async def history(
    db: AsyncDatabase[Document],
    start: datetime,
    end: datetime,
    endpoint: str | None,
    deployment: str | None,
) -> list[Document]:
    """The records that overlap [start, end). Times are stored as ISO text (UTC), which
    sorts like the times themselves."""
    query: dict[str, Any] = {
        "started_at": {"$lt": end.isoformat()},
        "$or": [{"stopped_at": None}, {"stopped_at": {"$gt": start.isoformat()}}],
    }
    if endpoint:
        query["endpoint"] = endpoint
    if deployment:
        query["deployment"] = deployment
    return [doc async for doc in db[INSTANCE_HISTORY].find(query)]
