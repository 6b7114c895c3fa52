"""Wait until a traffic change is live: the traffic controller's `traffic.applied` event.

The controller publishes `traffic.applied` with the version of every endpoint
in the snapshot Envoy ACKed. `AppliedWatcher` subscribes *before* the change
is made (so the event cannot slip by), then `wait(endpoint, version)` returns
once a snapshot with that endpoint at that version or later is live, or
raises after a deadline (no gateway connected, for instance).

It is a FastStream subscriber of the two typed events (core NATS: it needs
only what is published while it waits, no stream consumer), run on an event
loop of its own so the synchronous CLI can wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sluice.common.events.catalogue import (
    TRAFFIC_APPLIED,
    TRAFFIC_REJECTED,
    TrafficApplied,
    TrafficRejected,
)
from sluice.common.events.envelope import CloudEvent  # FastStream reads the handlers' types

if TYPE_CHECKING:
    from faststream.nats import NatsBroker

# faststream and nats-py are imported where a watcher starts, not here: every CLI
# command imports this module, most never wait on the gateway (imports cost ~1 s).

CONNECT_TIMEOUT_S = 2


def subscribe_gateway_outcome(
    broker: NatsBroker,
    subject_prefix: str,
    *,
    on_applied: Callable[[CloudEvent[TrafficApplied]], Awaitable[None]],
    on_rejected: Callable[[CloudEvent[TrafficRejected]], Awaitable[None]],
) -> None:
    """Core NATS subscribers of what the gateway did with a configuration (no history)."""
    from sluice.common.events.nats import decode_cloudevent

    broker.subscriber(
        TRAFFIC_APPLIED.subject(subject_prefix),
        decoder=decode_cloudevent,
        title="sluice CLI <- traffic.applied",
        description="The CLI waits for its endpoint's version to be live (core NATS).",
    )(on_applied)
    broker.subscriber(
        TRAFFIC_REJECTED.subject(subject_prefix),
        decoder=decode_cloudevent,
        title="sluice CLI <- traffic.rejected",
        description="The CLI reports Envoy's refusal of its change (core NATS).",
    )(on_rejected)


class NotApplied(TimeoutError):
    """The change was not confirmed; the message says why and what to do."""


class EventBusDown(NotApplied):
    """NATS cannot be reached, so no confirmation can arrive: raised before any change."""


class AppliedWatcher:
    def __init__(self, nats_url: str, subject_prefix: str):
        from faststream.nats import NatsBroker

        self._url = nats_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._seen: dict[str, int] = {}
        self._rejected: dict[str, str] = {}
        self._changed = threading.Condition()
        self._connect_error: asyncio.Future[Exception] | None = None
        self._broker = NatsBroker(
            nats_url,
            name="sluice-cli",
            connect_timeout=CONNECT_TIMEOUT_S,
            drain_timeout=2,  # a CLI command never waits nats-py's 30 s to end
            error_cb=self._on_error,
            logger=None,
        )

        subscribe_gateway_outcome(
            self._broker, subject_prefix, on_applied=self._applied, on_rejected=self._rejected_by
        )

    async def _applied(self, event: CloudEvent[TrafficApplied]) -> None:
        with self._changed:
            for name, version in event.data.endpoints.items():
                self._seen[name] = max(self._seen.get(name, 0), version)
            self._changed.notify_all()

    async def _rejected_by(self, event: CloudEvent[TrafficRejected]) -> None:
        with self._changed:
            for name in event.data.endpoints:
                self._rejected[name] = event.data.error or "rejected by Envoy"
            self._changed.notify_all()

    def __enter__(self) -> AppliedWatcher:
        import nats.errors

        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(timeout=30)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self.__exit__(None, None, None)
            raise EventBusDown(
                f"NATS, the platform's event bus, is not reachable at {self._url}, so the "
                "gateway's confirmation cannot arrive; nothing was changed. Check `sluice "
                "status` (the supervisor restarts it) and retry, or pass --no-wait to make "
                "the change without waiting for the gateway"
            ) from exc
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._broker.stop(), self._loop)
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to do
                future.result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    async def _on_error(self, exc: Exception) -> None:
        if self._connect_error is not None and not self._connect_error.done():
            self._connect_error.set_result(exc)

    async def _subscribe(self) -> None:
        # nats-py retries a refused first connection for good, reporting each try to
        # error_cb: the first report (or 5 s) ends the attempt, so the CLI fails at once.
        self._connect_error = asyncio.get_running_loop().create_future()
        starting: asyncio.Future[Any] = asyncio.ensure_future(self._broker.start())
        first: set[asyncio.Future[Any]] = {starting, self._connect_error}
        await asyncio.wait(first, timeout=5, return_when="FIRST_COMPLETED")
        if not starting.done() or starting.exception() is not None:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            done = self._connect_error.done()
            cause = self._connect_error.result() if done else TimeoutError("no answer in 5s")
            raise ConnectionError(f"cannot connect to NATS: {cause}")
        # The server has the subscriptions once it answers a ping: the change comes after.
        await self._broker.connection.flush(timeout=5)

    def wait(self, endpoint: str, version: int, timeout_s: float = 30.0) -> None:
        with self._changed:
            done = self._changed.wait_for(
                lambda: self._seen.get(endpoint, 0) >= version or endpoint in self._rejected,
                timeout=timeout_s,
            )
        if endpoint in self._rejected:
            raise NotApplied(f"the gateway rejected the change: {self._rejected[endpoint]}")
        if not done:
            raise NotApplied(
                f"the change to {endpoint} is stored (version {version}) but the gateway has "
                f"not applied it within {timeout_s:.0f}s; is the traffic controller running "
                "(`sluice status`)?"
            )
