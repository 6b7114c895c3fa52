"""The xDS port hands out every key: only the platform's Envoy certificate gets anything.

An attacker on the machine (deployment code included) tries the ADS port without TLS,
with TLS but no client certificate, with a certificate of a CA of its own, and with a
genuine platform certificate under another node id; each gets no resource. Envoy,
holding its certificate, keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from sluice.common.pki import XDS_SERVER, PlatformPki
from sluice.testing.traffic import Traffic, Upstream, World, eventually

KEY = "primary-key-1"
LISTENERS = "type.googleapis.com/envoy.config.listener.v3.Listener"


async def fetch(channel: grpc.aio.Channel, node: str) -> list[discovery_pb2.DiscoveryResponse]:
    """Ask for every listener as `node`; whatever came back within 3 s.

    One request: the server judges the node on it, and a second one sent after a refusal
    races the stream's end (grpc-core then reports INTERNAL "Failed execute_batch")."""
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node), type_url=LISTENERS)
        await asyncio.sleep(3)

    got: list[discovery_pb2.DiscoveryResponse] = []

    async def read() -> None:
        async for response in stub.StreamAggregatedResources(requests()):
            got.append(response)

    with contextlib.suppress(TimeoutError):  # the stream stays open: read for 5 s
        await asyncio.wait_for(read(), 5)
    return got


def tls_channel(address: str, identity_folder: Path | None, pki: PlatformPki) -> grpc.aio.Channel:
    """TLS trusting the platform CA; with the client identity of `identity_folder`'s CA."""
    ca = pki.ca_cert.read_bytes()
    if identity_folder is None:
        credentials = grpc.ssl_channel_credentials(ca)
    else:
        chain, key, _ = PlatformPki(identity_folder).client("sluice-test-gateway").read()
        credentials = grpc.ssl_channel_credentials(ca, key, chain)
    options = [("grpc.ssl_target_name_override", XDS_SERVER)]
    return grpc.aio.secure_channel(address, credentials, options=options)


async def assert_refused(channel: grpc.aio.Channel, node: str = "sluice-test-gateway") -> None:
    async with channel:
        try:
            got = await fetch(channel, node)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), exc
            return
    assert got == [], f"got {len(got)} responses"


@pytest.fixture
async def served(traffic: Traffic, world: World, upstreams: Callable[[str], Upstream]) -> Traffic:
    blue = upstreams("blue")
    await world.deployment("guarded", "blue", [blue.address])
    await world.endpoint("guarded", traffic={"blue": 100}, keys=(KEY, "secondary-key-1"))
    await asyncio.to_thread(
        eventually, lambda: traffic.score("guarded", KEY)[0], lambda s: s == 200
    )
    return traffic


async def test_xds_refuses_clients_without_the_platform_certificate(
    served: Traffic, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{served.envoy.xds_port}"
    pki = PlatformPki(served.settings.pki_folder)
    await assert_refused(grpc.aio.insecure_channel(address))  # plain gRPC
    await assert_refused(tls_channel(address, None, pki))  # TLS, no client certificate
    await assert_refused(tls_channel(address, tmp_path / "own-ca", pki))  # another CA's
    # Envoy kept its stream and its configuration: scoring still works.
    assert (await asyncio.to_thread(served.score, "guarded", KEY))[0] == 200


async def test_a_platform_certificate_cannot_pose_as_another_node(served: Traffic) -> None:
    address = f"127.0.0.1:{served.envoy.xds_port}"
    pki = PlatformPki(served.settings.pki_folder)
    # A genuine client certificate (the probe's), asking as the gateway's node id.
    chain, key, ca = pki.client("sluice-probe").read()
    credentials = grpc.ssl_channel_credentials(ca, key, chain)
    options = [("grpc.ssl_target_name_override", XDS_SERVER)]
    channel = grpc.aio.secure_channel(address, credentials, options=options)
    await assert_refused(channel, node="sluice-test-gateway")
    assert (await asyncio.to_thread(served.score, "guarded", KEY))[0] == 200


async def test_envoy_s_own_certificate_gets_the_configuration(served: Traffic) -> None:
    """The control: the same request with the gateway's certificate gets an answer (a client
    that never ACKs gets the first push phase: the listeners)."""
    address = f"127.0.0.1:{served.envoy.xds_port}"
    pki = PlatformPki(served.settings.pki_folder)
    async with tls_channel(address, pki.folder, pki) as channel:
        got = await fetch(channel, "sluice-test-gateway")
    assert [r.type_url for r in got if r.resources] == [LISTENERS]
