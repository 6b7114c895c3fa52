"""The instance counts autoscale settings decided, as the provisioner applies them.

The metrics service evaluates autoscale settings (docs/autoscale.md) and stores each
decision in `autoscale_settings` (`state.capacity`) with an `autoscale.*` event. The
provisioner reads that collection (never writes it): all of it at start, one setting
whenever an `autoscale.created|updated|deleted|scaled` event names a deployment, then
wakes that deployment's worker. An enabled setting's capacity replaces the
deployment's `instance_count` (and its `target_utilization`, which would fight it);
a disabled or deleted setting gives the count back to the deployment's spec. A capacity
decided for an earlier deployment of the same name (deleted and created again) is not
this one's: the deployment runs its own count until the setting decides for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import PushStreamSubscriber
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.autoscale.model import AutoscaleProfile, AutoscaleSetting
from sluice.common.events import CloudEvent, fanout_subscriber
from sluice.common.events.catalogue import (
    AUTOSCALE_CHANGED,
    AUTOSCALE_SCALED,
    AutoscaleChanged,
    AutoscaleScaled,
)
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import deployment_id

log = get_logger(__name__)
AUTOSCALE_SETTINGS = "autoscale_settings"  # written by the metrics service only


class AutoscaleEvent(CloudEvent[AutoscaleChanged | AutoscaleScaled]):
    """A setting changed or decided: either way, read its capacity again."""


class AutoscaleCounts:
    def __init__(self, db: AsyncDatabase[Document]):
        self._c = db[AUTOSCALE_SETTINGS]
        self._counts: dict[str, int] = {}  # lower-cased deployment id -> instances
        # ... -> the creation time of the deployment the count was decided for (None: unknown)
        self._decided_for: dict[str, datetime | None] = {}
        self._decided_at: dict[str, float] = {}  # ... -> epoch of the last decision
        # ... -> (setting, its active profile, a marker that changes with either)
        self._active: dict[str, tuple[AutoscaleSetting, AutoscaleProfile, str]] = {}

    def count(self, key: str, created_at: datetime | None = None) -> int | None:
        """The count an enabled autoscale setting wants for deployment `key`, if any: none
        when it was decided for another deployment of that name than the one created at
        `created_at` (deleted and created again since)."""
        key = key.lower()
        decided_for = self._decided_for.get(key)
        if created_at is not None and decided_for is not None and decided_for != created_at:
            return None
        return self._counts.get(key)

    def decided_at(self, key: str) -> float:
        """Where the metric data of the last decision of deployment `key`'s setting starts
        (epoch seconds; 0: never decided): a decision overrules a wake-up only if all it
        saw came after it."""
        return self._decided_at.get(key.lower(), 0.0)

    def active(self, key: str) -> tuple[AutoscaleSetting, AutoscaleProfile, str] | None:
        """An enabled setting of deployment `key` with its active profile (what a cluster's
        HorizontalPodAutoscaler is rendered from) and a marker of both."""
        return self._active.get(key.lower())

    def _take(self, doc: Document) -> None:
        key = str(doc["target"])
        state = doc.get("state") or {}
        capacity = state.get("capacity")  # None: not evaluated yet
        setting = AutoscaleSetting.model_validate(doc["spec"])
        if setting.enabled and capacity is not None:
            self._counts[key] = int(capacity)
            self._decided_for[key] = _when(state.get("deployment_created_at"))
        else:
            self._counts.pop(key, None)
            self._decided_for.pop(key, None)
        decisions = doc.get("decisions") or []
        if decisions:
            when = decisions[0]["time"]
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            # What the decision saw: metric data from `data_from` on (its decision time for
            # older records).
            self._decided_at[key] = float(decisions[0].get("data_from") or when.timestamp())
        if not setting.enabled:
            self._active.pop(key, None)
            return
        name = state.get("active_profile") or ""
        default = next(p for p in setting.profiles if not p.scheduled)
        profile = next((p for p in setting.profiles if p.name == name), default)
        self._active[key] = (setting, profile, f"{doc['version']}:{profile.name}")

    async def load(self) -> None:
        self._counts.clear()
        self._decided_for.clear()
        self._active.clear()
        async for doc in self._c.find({}):
            self._take(doc)

    async def refresh(self, endpoint: str, deployment: str) -> None:
        key = deployment_id(endpoint, deployment).lower()
        doc = await self._c.find_one({"target": key})
        if doc is None:
            self._counts.pop(key, None)
            self._decided_for.pop(key, None)
            self._active.pop(key, None)
        else:
            self._take(doc)
        log.info("autoscale_count", deployment=key, count=self._counts.get(key))


def _when(stored: object) -> datetime | None:
    """A deployment's creation time as the metrics service stored it (its ISO text)."""
    if not isinstance(stored, str) or not stored:
        return None
    try:
        when = datetime.fromisoformat(stored)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def subscribe_autoscale(
    broker: NatsBroker,
    *,
    stream: str,
    prefix: str,
    on_change: Callable[[str, str], Awaitable[None]],
) -> PushStreamSubscriber:
    """`on_change(endpoint, deployment)` for each event of a setting (the provisioner
    re-reads the setting and wakes the deployment)."""
    subscriber = fanout_subscriber(
        broker,
        stream=stream,
        prefix=prefix,
        events=[*AUTOSCALE_CHANGED.values(), AUTOSCALE_SCALED],
        title="provisioner <- autoscale.*",
        description="The provisioner runs the instance count an autoscale setting decided.",
    )

    @subscriber
    async def on_autoscale(event: AutoscaleEvent) -> None:
        await on_change(event.data.endpoint, event.data.deployment)

    return subscriber
