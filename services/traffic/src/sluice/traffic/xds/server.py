"""The ADS server (State of the World) that Envoy connects to.

Per stream and per resource type it keeps what the xDS protocol needs: the
names Envoy subscribed to, the version and nonce last sent, the version
last ACKed and the versions NACKed. Rules (envoy api/xds_protocol.rst):

- a request whose `response_nonce` is not the latest one sent is stale and ignored;
- a request with `error_detail` NACKs the version sent with that nonce: it is
  recorded and never sent again on that stream (Envoy keeps its last good config;
  a NACK carries the *previous* version, so re-sending on it would loop);
- a response goes out only when the version changed or the subscribed names did;
- pushes go in phases, secrets/clusters/endpoints first and listeners/routes once
  the first phase is answered, so nothing refers to a resource Envoy lacks.

Requests are read by a separate task so pushes never wait on the next request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sluice.common.grpc_server import peer_name
from sluice.common.log import get_logger
from sluice.common.prometheus import XDS_PUSHES, XDS_RESPONSES
from sluice.traffic.xds.snapshot import (
    ALL_TYPES,
    PUSH_PHASES,
    WILDCARD_TYPES,
    Snapshot,
    short,
)

log = get_logger(__name__)
SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# A grpc.health.v1 service name that is SERVING while at least one Envoy is connected (its
# stream open and its node known): what `sluice status` and the test harness wait on.
GATEWAY_HEALTH = "sluice.traffic.Gateway"
PHASE_ACK_TIMEOUT_S = 5.0


@dataclass
class Subscription:
    """One resource type on one stream."""

    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_nonce: str | None = None
    sent_names: frozenset[str] | None = None
    awaiting: bool = False  # a response is out and neither ACKed nor NACKed yet
    acked: str | None = None
    nacked: set[str] = field(default_factory=set)
    last_error: str = ""


class Stream:
    """What the server knows about one connected Envoy."""

    def __init__(self, stream_id: int, peer: str):
        self.id = stream_id
        self.peer = peer
        self.node = ""
        self.certificate: str | None = None  # the client certificate's name (mutual TLS)
        self.denied = ""  # why the stream is refused, once it is
        self.subs: dict[str, Subscription] = {}
        self.wake = asyncio.Event()
        self.answered = asyncio.Condition()
        self._nonces = itertools.count(1)
        self.closed = False
        self.requests = 0  # requests received, to wait for "something new" without races

    def next_nonce(self) -> str:
        return str(next(self._nonces))


class Outcome(Enum):
    ACKED = "acked"
    NACKED = "nacked"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Rejection:
    type_url: str
    version: str
    error: str
    node: str


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    rejection: Rejection | None = None


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves the current snapshot to every connected Envoy (one writer for all of them)."""

    def __init__(
        self,
        on_connected: Callable[[bool], Awaitable[None]] | None = None,
        *,
        node_from_certificate: bool = True,
    ) -> None:
        """With `node_from_certificate` (served over mutual TLS), a stream's node id must be
        the name of the client certificate it connected with: a certificate issued to one
        gateway cannot pose as another. Off only for benchmarks serving plain gRPC."""
        self._node_from_certificate = node_from_certificate
        self._snapshot: Snapshot | None = None
        self._streams: set[Stream] = set()
        self._changed = asyncio.Condition()
        self._stream_ids = itertools.count(1)
        self._on_connected = on_connected
        self._connected = False

    # ---- what the controller uses ------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def _report_connected(self) -> None:
        """Tell `on_connected` when the first Envoy arrives and when the last one leaves."""
        connected = any(stream.node for stream in self._streams)
        if connected != self._connected:
            self._connected = connected
            log.info("gateway_connected" if connected else "gateway_disconnected")
            if self._on_connected is not None:
                await self._on_connected(connected)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current and push it to every stream (checked by the caller)."""
        self._snapshot = snapshot
        for stream in self._streams:
            stream.wake.set()

    async def wait_applied(self, snapshot: Snapshot, deadline_s: float | None) -> Result:
        """Wait until every connected Envoy ACKed `snapshot` (and at least one is connected),
        or one NACKed part of it."""

        def settled() -> Result | None:
            if not self._streams:
                return None
            done = True
            for stream in self._streams:
                for type_url in ALL_TYPES:
                    sub = stream.subs.get(type_url)
                    version = snapshot.versions[type_url]
                    if sub is not None and version in sub.nacked:
                        return Result(
                            Outcome.NACKED,
                            Rejection(type_url, version, sub.last_error, stream.node),
                        )
                    if not _needs(snapshot, type_url, sub):
                        continue
                    if sub is None or sub.acked != version or sub.sent_names != sub.names:
                        done = False
            return Result(Outcome.ACKED) if done else None

        async def wait() -> Result:
            async with self._changed:
                while (result := settled()) is None:
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(wait(), deadline_s)
        except TimeoutError:
            return Result(Outcome.TIMEOUT)

    # ---- the gRPC service ----------------------------------------------------------------

    async def StreamAggregatedResources(  # noqa: N802 - the proto's method name
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        stream = Stream(next(self._stream_ids), context.peer())
        if self._node_from_certificate:
            stream.certificate = peer_name(context)
            if stream.certificate is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "xDS needs a platform client certificate"
                )
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(stream, request_iterator))
        log.info("xds_stream_opened", stream=stream.id, peer=stream.peer)
        try:
            while not stream.closed:
                await stream.wake.wait()
                stream.wake.clear()
                async for response in self._responses(stream):
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)
            await self._notify()
            await self._report_connected()
            log.info("xds_stream_closed", stream=stream.id, node=stream.node)
        if stream.denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, stream.denied)

    async def DeltaAggregatedResources(  # noqa: N802 - the proto's method name
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this control plane serves State of the World ADS only"
        )
        yield  # pragma: no cover - abort raises

    async def _read(self, stream: Stream, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                await self._on_request(stream, request)
                if stream.denied:
                    break
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.closed = True
            stream.wake.set()
        async with stream.answered:
            stream.answered.notify_all()

    async def _on_request(self, stream: Stream, request: Any) -> None:
        if request.node.id and not stream.node:
            if stream.certificate is not None and request.node.id != stream.certificate:
                stream.denied = (
                    f"node id {request.node.id!r} is not the certificate's name "
                    f"{stream.certificate!r}"
                )
                log.warning("xds_node_refused", node=request.node.id, cert=stream.certificate)
                return
            stream.node = request.node.id
            await self._report_connected()
        stream.requests += 1
        type_url = request.type_url
        sub = stream.subs.setdefault(type_url, Subscription())
        if request.response_nonce and request.response_nonce != sub.sent_nonce:
            return  # stale: an answer to a response that was superseded
        if request.response_nonce:
            sub.awaiting = False
            if request.HasField("error_detail"):
                bad = sub.sent_version or ""
                sub.nacked.add(bad)
                sub.last_error = request.error_detail.message
                XDS_RESPONSES.labels(short(type_url), "nack").inc()
                log.warning(
                    "xds_nack",
                    node=stream.node,
                    type=short(type_url),
                    version=bad,
                    kept=request.version_info,
                    error=sub.last_error,
                )
            else:
                sub.acked = request.version_info
                XDS_RESPONSES.labels(short(type_url), "ack").inc()
                log.debug("xds_ack", node=stream.node, type=short(type_url), version=sub.acked)
        else:
            sub.acked = request.version_info or None
        sub.names = frozenset(request.resource_names)
        async with stream.answered:
            stream.answered.notify_all()
        await self._notify()
        stream.wake.set()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _responses(self, stream: Stream) -> AsyncIterator[Any]:
        """Push phase by phase; within a phase keep answering new subscriptions (Envoy asks
        for a new cluster's endpoints before it ACKs the clusters) until all is answered."""
        for i, phase in enumerate(PUSH_PHASES):
            last_phase = i + 1 == len(PUSH_PHASES)
            deadline = asyncio.get_running_loop().time() + PHASE_ACK_TIMEOUT_S
            while True:
                seen = stream.requests
                for type_url in phase:
                    response = self._response(stream, type_url)
                    if response is not None:
                        yield response
                awaiting = [t for t in phase if t in stream.subs and stream.subs[t].awaiting]
                if last_phase or not awaiting or stream.closed:
                    break
                if not await self._next_request(stream, seen, deadline):
                    log.warning(
                        "xds_phase_unanswered",
                        node=stream.node,
                        types=[short(t) for t in awaiting],
                    )
                    break

    async def _next_request(self, stream: Stream, seen: int, deadline: float) -> bool:
        """Wait until the stream has had more than `seen` requests; False at the deadline."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining), stream.answered:
                await stream.answered.wait_for(lambda: stream.requests > seen or stream.closed)
        except TimeoutError:
            return False
        return True

    def _response(self, stream: Stream, type_url: str) -> Any | None:
        snapshot = self._snapshot
        sub = stream.subs.get(type_url)
        if snapshot is None or sub is None:
            return None
        version = snapshot.versions[type_url]
        if version in sub.nacked:
            return None
        if sub.sent_version == version and sub.sent_names == sub.names:
            return None
        items = snapshot.resources[type_url]
        if type_url in WILDCARD_TYPES:
            resources = list(items.values())
        else:
            if not sub.names:
                return None
            resources = [items[n] for n in sorted(sub.names) if n in items]
        nonce = stream.next_nonce()
        sub.sent_version, sub.sent_nonce, sub.sent_names = version, nonce, sub.names
        sub.awaiting = True
        XDS_PUSHES.labels(short(type_url)).inc()
        log.debug(
            "xds_push", node=stream.node, type=short(type_url), version=version, n=len(resources)
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, resources=resources
        )


def _needs(snapshot: Snapshot, type_url: str, sub: Subscription | None) -> bool:
    """Whether a stream must ACK this type of the snapshot for it to count as applied."""
    if type_url in WILDCARD_TYPES:
        return True
    if sub is None:
        return bool(snapshot.resources[type_url])
    return bool(sub.names)
