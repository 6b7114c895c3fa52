"""The batch service's subscription: a batch deployment created or updated gets warm workers;
a deleted one loses its spares, their folder and, as root, its user.

Each batch service keeps its own spares (spares.py), so every replica needs
every event, and none needs history: an ephemeral consumer of new events.
Events are hints; the handler re-reads the deployment.
"""

from __future__ import annotations

from typing import Protocol

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import PushStreamSubscriber

from sluice.common.events import CloudEvent, fanout_subscriber
from sluice.common.events.catalogue import (
    BATCH_DEPLOYMENT_CREATED,
    BATCH_DEPLOYMENT_DELETED,
    BATCH_DEPLOYMENT_UPDATED,
    BatchDeploymentChanged,
)


class Warmer(Protocol):
    def warm_soon(self, endpoint: str, deployment: str) -> None: ...

    def forget_soon(self, endpoint: str, deployment: str) -> None: ...


def subscribe_deployment_events(
    broker: NatsBroker, *, stream: str, prefix: str, warmer: Warmer
) -> PushStreamSubscriber:
    subscriber = fanout_subscriber(
        broker,
        stream=stream,
        prefix=prefix,
        events=[BATCH_DEPLOYMENT_CREATED, BATCH_DEPLOYMENT_UPDATED, BATCH_DEPLOYMENT_DELETED],
        title="batch <- batch deployments",
        description=(
            "Each batch service starts warm worker processes for a new or changed batch "
            "deployment, so its first job starts at once, and removes a deleted one's "
            "spares, folder and user (ephemeral)."
        ),
    )

    @subscriber
    async def on_batch_deployment(event: CloudEvent[BatchDeploymentChanged]) -> None:
        if event.type == BATCH_DEPLOYMENT_DELETED.type:
            warmer.forget_soon(event.data.endpoint, event.data.name)
        else:
            warmer.warm_soon(event.data.endpoint, event.data.name)

    return subscriber
