"""The provisioner on NATS: a durable consumer of registry events, and usage samples.

Handlers are idempotent: an event only says "look at deployment X again". The
consumer is filtered to the registry's deployment and endpoint events, so the
provisioner never receives its own progress reports.
"""

from __future__ import annotations

import json
from typing import Annotated, Protocol

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import PullStreamSubscriber
from pydantic import Field

from sluice.common import tracing
from sluice.common.events import CloudEvent, durable_subscriber
from sluice.common.events.catalogue import (
    DEPLOYMENT_CREATED,
    DEPLOYMENT_DELETED,
    DEPLOYMENT_UPDATED,
    ENDPOINT_CREATED,
    ENDPOINT_DELETED,
    ENDPOINT_UPDATED,
    PROVISIONER,
    DeploymentChanged,
    EndpointChanged,
)
from sluice.common.log import bind_correlation_id
from sluice.common.prometheus import observe_lag
from sluice.common.resources import deployment_id

DURABLE = "provisioner-registry-events"
SOURCE = PROVISIONER  # the CloudEvents source of what this service publishes
REGISTRY_EVENTS = (
    DEPLOYMENT_CREATED,
    DEPLOYMENT_UPDATED,
    DEPLOYMENT_DELETED,
    ENDPOINT_CREATED,
    ENDPOINT_UPDATED,
    ENDPOINT_DELETED,
)
RegistryChange = Annotated[DeploymentChanged | EndpointChanged, Field(discriminator="kind")]


class RegistryChangeEvent(CloudEvent[RegistryChange]):
    """A registry event about a deployment or an endpoint."""


class Wakeups(Protocol):
    async def touch(self, key: str) -> None: ...

    async def touch_endpoint(self, endpoint: str) -> None: ...


def subscribe_registry_events(
    broker: NatsBroker, *, stream: str, prefix: str, wakeups: Wakeups
) -> PullStreamSubscriber:
    """Wake the deployment (or every deployment of the endpoint) an event names."""
    subscriber = durable_subscriber(
        broker,
        stream=stream,
        prefix=prefix,
        durable=DURABLE,
        events=REGISTRY_EVENTS,
        description="The provisioner looks at the named deployment (or endpoint) again.",
    )

    @subscriber
    async def on_registry_change(event: RegistryChangeEvent) -> None:
        observe_lag("provisioner", event.time)
        bind_correlation_id(event.correlationid)
        # A traced change: the worker's passes continue its trace (Reconciler.touch).
        with tracing.consuming(event, f"provisioner: {event.type}"):
            if isinstance(event.data, DeploymentChanged):
                await wakeups.touch(deployment_id(event.data.endpoint, event.data.name))
            else:
                await wakeups.touch_endpoint(event.data.name)

    return subscriber


class UsagePublisher:
    """Usage samples of instances on core NATS (measurements, not kept in the events stream).

    The provisioner's events (deployment.*, instance.*) do not go through here: they
    commit with the writes they announce (store.py, reporter.py)."""

    def __init__(self, broker: NatsBroker, usage_prefix: str):
        self._broker = broker
        self._usage_prefix = usage_prefix

    async def usage(self, endpoint: str, deployment: str, sample: dict[str, object]) -> None:
        """A usage sample for the metrics service."""
        await self._broker.publish(
            json.dumps(sample).encode(), f"{self._usage_prefix}.{endpoint}.{deployment}"
        )
