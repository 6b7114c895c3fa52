"""What the gateway routes: the instance addresses in the traffic controller's latest
`traffic.applied` (every connected Envoy ACKed a configuration balancing over them).

The provisioner stops an instance only once the gateway no longer routes it, and
lets an old instance go only once a new one is routed (domain.plan). An ephemeral
JetStream consumer of new `traffic.applied` events is enough: nothing here needs
history, since a missed event is covered by the next one or by the waiting limit
(ROUTE_WAIT_S), after which the worker goes ahead as if the gateway had answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases import PushStreamSubscriber

from sluice.common.events import CloudEvent, fanout_subscriber
from sluice.common.events.catalogue import TRAFFIC_APPLIED, TrafficApplied
from sluice.common.log import get_logger

log = get_logger(__name__)
# How long a worker waits for the gateway to route (or drop) an instance before going ahead:
# a gateway that is down or rejected the configuration must not stall every rollout.
ROUTE_WAIT_S = 10.0


def _normal(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host.strip('[]')}:{port}"


class RoutingView:
    """`endpoint/deployment` -> the addresses the gateway balances over, as last applied."""

    def __init__(self) -> None:
        self._routed: dict[str, frozenset[str]] = {}

    def update(self, routed: Mapping[str, Iterable[str]]) -> set[str]:
        """Take a new `traffic.applied` view; return the deployments whose routing changed."""
        new = {key: frozenset(_normal(a) for a in addresses) for key, addresses in routed.items()}
        changed = {k for k in new.keys() | self._routed.keys() if new.get(k) != self._routed.get(k)}
        self._routed = new
        return changed

    def knows(self, deployment: str) -> bool:
        """Whether the gateway's last applied configuration has the deployment at all."""
        return deployment in self._routed

    def routes(self, deployment: str, address: str) -> bool | None:
        """Whether the gateway routes `address` for `deployment`; None when the gateway does
        not know the deployment at all (no gateway, or not routed yet: nothing to wait for)."""
        addresses = self._routed.get(deployment)
        if addresses is None:
            return None
        return _normal(address) in addresses


def subscribe_applied(
    broker: NatsBroker,
    *,
    stream: str,
    prefix: str,
    view: RoutingView,
    on_change: Callable[[str], Awaitable[None]],
) -> PushStreamSubscriber:
    """Feed every new `traffic.applied` into `view`; call `on_change` per deployment that moved."""
    subscriber = fanout_subscriber(
        broker,
        stream=stream,
        prefix=prefix,
        events=[TRAFFIC_APPLIED],
        title="provisioner <- traffic.applied",
        description="The provisioner learns which instances the gateway routes (ephemeral).",
    )

    @subscriber
    async def on_applied(event: CloudEvent[TrafficApplied]) -> None:
        for key in view.update(event.data.routed):
            await on_change(key)

    return subscriber
