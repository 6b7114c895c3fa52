"""What the gateway routes: the instance addresses in the traffic controller's latest
`traffic.applied` (every connected Envoy ACKed a configuration balancing over them).

The provisioner stops an instance only once the gateway no longer routes it, and
lets an old instance go only once a new one is routed (domain.plan). A plain
core-NATS subscription keeps the delay to the event's own: nothing here needs
history, since a missed event is covered by the next one or by the waiting limit
(ROUTE_WAIT_S), after which the worker goes ahead as if the gateway had answered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faststream.nats import NatsBroker
from pydantic import ValidationError

from sluice.common.events import parse_envelope
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

    def routes(self, deployment: str, address: str) -> bool | None:
        """Whether the gateway routes `address` for `deployment`; None when the gateway does
        not know the deployment at all (no gateway, or not routed yet: nothing to wait for)."""
        addresses = self._routed.get(deployment)
        if addresses is None:
            return None
        return _normal(address) in addresses


class AppliedListener:
    """Feeds `traffic.applied` events into a RoutingView and says which deployments changed."""

    def __init__(
        self,
        broker: NatsBroker,
        subject_prefix: str,
        view: RoutingView,
        on_change: Callable[[str], Awaitable[None]],
    ):
        self._broker = broker
        self._subject = f"{subject_prefix}.traffic.applied"
        self._view = view
        self._on_change = on_change
        self._subscription: Any = None

    async def start(self) -> None:
        self._subscription = await self._broker.connection.subscribe(self._subject, cb=self._on_msg)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        try:
            routed = parse_envelope(msg.data).data.get("routed")
        except ValidationError:
            log.warning("event_unreadable", subject=msg.subject)
            return
        if not isinstance(routed, dict):
            return  # an older traffic controller: the waiting limit covers it
        for key in self._view.update(routed):
            await self._on_change(key)
