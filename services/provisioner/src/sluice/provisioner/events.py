"""The provisioner on NATS: a durable consumer of registry events, and its own events.

Handlers are idempotent: an event only says "look at deployment X again".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sluice.common.events import EventPublisher, parse_envelope
from sluice.common.log import bind_correlation_id, get_logger
from sluice.common.prometheus import observe_lag
from sluice.common.resources import deployment_id

log = get_logger(__name__)
DURABLE = "provisioner"
SOURCE = "sluice/provisioner"  # the CloudEvents source of what this service publishes


class RegistryEvents:
    """Pulls `deployment.*` and `endpoint.*` events and calls `on_deployment(key)`."""

    def __init__(self, broker: NatsBroker, *, stream: str, prefix: str):
        self._broker = broker
        self._stream = stream
        self._prefix = prefix
        self._stopped = False

    def stop(self) -> None:
        """End `run()` after the current fetch (nats-py may swallow a cancellation mid-fetch)."""
        self._stopped = True

    async def run(
        self,
        on_deployment: Callable[[str], Awaitable[None]],
        on_endpoint: Callable[[str], Awaitable[None]],
    ) -> None:
        js = self._broker.connection.jetstream()
        sub = await js.pull_subscribe(
            f"{self._prefix}.>",
            durable=DURABLE,
            stream=self._stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT),
        )
        try:
            while not self._stopped:
                await self._pull(sub, on_deployment, on_endpoint)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pull(
        self,
        sub: Any,
        on_deployment: Callable[[str], Awaitable[None]],
        on_endpoint: Callable[[str], Awaitable[None]],
    ) -> None:
        try:
            messages = await sub.fetch(64, timeout=1.0)
        except NatsTimeout:
            return
        for msg in messages:
            entity = msg.subject.removeprefix(self._prefix + ".").split(".")[0]
            with contextlib.suppress(ValueError):
                envelope = parse_envelope(msg.data)
                # Our own progress reports would only wake the worker that sent them.
                if envelope.source != SOURCE:
                    observe_lag("provisioner", envelope.time)
                    bind_correlation_id(envelope.correlationid)
                    await self._dispatch(entity, envelope.data, on_deployment, on_endpoint)
            await msg.ack()

    @staticmethod
    async def _dispatch(
        entity: str,
        data: dict[str, Any],
        on_deployment: Callable[[str], Awaitable[None]],
        on_endpoint: Callable[[str], Awaitable[None]],
    ) -> None:
        if entity == "deployment":
            await on_deployment(deployment_id(str(data["endpoint"]), str(data["name"])))
        elif entity == "endpoint":
            await on_endpoint(str(data["name"]))


class ProvisionerEvents:
    """What the provisioner announces: instances ready/stopped, deployments ready/failed."""

    def __init__(self, publisher: EventPublisher, broker: NatsBroker, usage_prefix: str):
        self._publisher = publisher
        self._broker = broker
        self._usage_prefix = usage_prefix

    async def publish(
        self, entity: str, verb: str, *, endpoint: str, deployment: str, **data: object
    ) -> None:
        payload: dict[str, object] = {"endpoint": endpoint, "name": deployment, **data}
        try:
            await self._publisher.publish(
                entity, verb, subject=f"{endpoint}/{deployment}", data=payload, actor="provisioner"
            )
        except TimeoutError as exc:
            log.warning("event_not_published", entity=entity, verb=verb, error=str(exc))

    async def usage(self, endpoint: str, deployment: str, sample: dict[str, object]) -> None:
        """A usage sample on core NATS (not kept in the events stream): for the metrics service."""
        await self._broker.publish(
            json.dumps(sample).encode(), f"{self._usage_prefix}.{endpoint}.{deployment}"
        )
