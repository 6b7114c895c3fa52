"""Access logs reach an ALS receiver when one is configured, and never carry credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from sluice.common.pki import ALS_SERVER, PlatformPki
from sluice.common.settings import Settings
from sluice.common.supervisor import Supervisor, free_port
from sluice.testing.plugin import EnvoyGateway
from sluice.testing.traffic import GatewayPorts, Upstream, World, eventually, start_controller
from sluice.testing.wait import wait_for_async

KEY = "primary-key-1"


class Receiver(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def StreamAccessLogs(  # noqa: N802 - the proto's method name
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> Any:
        async for message in request_iterator:
            self.messages.append(message)
        return als_pb2.StreamAccessLogsResponse()


async def test_access_logs_go_to_the_receiver_without_the_key(
    sluice_settings: Settings,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    nats_broker: Any,
    world: World,
    upstreams: Callable[[str], Upstream],
) -> None:
    receiver = Receiver()
    server = grpc.aio.server()
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(receiver, server)
    # Envoy's access-log stream is mutual TLS with the platform CA (as the metrics service's).
    chain, key, ca = PlatformPki(sluice_settings.pki_folder).server(ALS_SERVER).read()
    credentials = grpc.ssl_server_credentials([(key, chain)], ca, require_client_auth=True)
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", credentials)
    await server.start()
    try:
        traffic = start_controller(
            sluice_settings,
            supervisor,
            envoy_gateway,
            gateway_ports,
            {"SLUICE_TRAFFIC_ALS_ADDRESS": f"127.0.0.1:{port}"},
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
            entries = [e for m in receiver.messages for e in m.http_logs.log_entry]
            statuses = {e.response.response_code.value for e in entries}
            return entries if {200, 401} <= statuses else None

        entries = await wait_for_async(both_logged, "a 200 and a 401 in the access log", 15)
        served = [e for e in entries if e.response.response_code.value == 200]
        tags = served[-1].common_properties.custom_tags
        assert (tags["sluice.endpoint"], tags["sluice.deployment"]) == ("logged", "blue")
        assert served[-1].request.authority == "logged.sluice.localhost"
        dump = b"".join(m.SerializeToString() for m in receiver.messages)
        assert KEY.encode() not in dump and b"wrong-key" not in dump
    finally:
        await server.stop(0)
