"""Envoy's access log reaches the metrics service's port as Fluentd Forward messages of the
compact record (sluice.common.access_log), over mutual TLS, and never carries credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack

from sluice.common import access_log as f
from sluice.common.pki import ALS_SERVER, PlatformPki
from sluice.common.settings import Settings
from sluice.common.supervisor import Supervisor
from sluice.metrics.forward import server_tls
from sluice.testing.plugin import EnvoyGateway
from sluice.testing.traffic import GatewayPorts, Upstream, World, eventually, start_controller
from sluice.testing.wait import wait_for_async

KEY = "primary-key-1"


class Received:
    """Every byte and every decoded message of all connections."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.messages: list[Any] = []
        self.connections: list[asyncio.BaseTransport] = []


class Receiver(asyncio.Protocol):
    def __init__(self, received: Received) -> None:
        self._received = received
        self._unpacker = msgpack.Unpacker(raw=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._received.connections.append(transport)

    def data_received(self, data: bytes) -> None:
        self._received.raw += data
        self._unpacker.feed(data)
        self._received.messages.extend(self._unpacker)


async def test_access_logs_go_to_the_receiver_without_the_key(
    sluice_settings: Settings,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    nats_broker: Any,
    world: World,
    upstreams: Callable[[str], Upstream],
) -> None:
    # Envoy's access log is mutual TLS with the platform CA (as the metrics service's port).
    tls = server_tls(PlatformPki(sluice_settings.pki_folder).server(ALS_SERVER))
    received = Received()
    server = await asyncio.get_running_loop().create_server(
        lambda: Receiver(received),
        "127.0.0.1",
        envoy_gateway.access_log_port,
        ssl=tls,
        reuse_address=True,
    )
    try:
        traffic = start_controller(
            sluice_settings,
            supervisor,
            envoy_gateway,
            gateway_ports,
            {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
        )
        blue = upstreams("blue")
        await world.deployment("logged", "blue", [blue.address])
        await world.endpoint("logged", traffic={"blue": 100})
        # In a thread: the receiver runs on this test's event loop meanwhile.
        await asyncio.to_thread(
            eventually, lambda: traffic.score("logged", KEY)[0], lambda s: s == 200
        )
        assert (await asyncio.to_thread(traffic.score, "logged", "wrong-key"))[0] == 401

        async def both_logged() -> list[Any] | None:
            records = [r for m in received.messages for _, r in m[1]]
            statuses = {f.parse(r).status for r in records}
            return records if {200, 401} <= statuses else None

        records = await wait_for_async(both_logged, "a 200 and a 401 in the access log", 15)
        assert {m[0] for m in received.messages} == {f.TAG}  # Forward mode: [tag, entries]
        assert {frozenset(r) for r in records} == {frozenset(f.record())}  # only its keys
        entries = [f.parse(r) for r in records]
        served = [e for e in entries if e.status == 200][-1]
        assert (served.endpoint, served.deployment) == ("logged", "blue")
        assert served.upstream == blue.address and served.request_id
        assert served.method == "POST" and served.path == "/score"
        assert served.duration_us > 0 and served.start_ms > 0 and not served.mirror
        assert served.request_body_bytes > 0 and served.response_body_bytes > 0
        assert served.request_header_bytes > 0 and served.response_header_bytes > 0
        refused = [e for e in entries if e.status == 401][-1]
        assert refused.endpoint == "logged" and not refused.deployment and not refused.upstream
        assert KEY.encode() not in received.raw and b"wrong-key" not in received.raw
    finally:
        # Envoy's connection too: left open (server.close() only stops listening), Envoy
        # would keep logging into this finished test's socket instead of reconnecting to
        # the next test's metrics service on the same port.
        server.close()
        for connection in received.connections:
            connection.close()
        await server.wait_closed()
