"""The gRPC bootstrap: health, reflection, bearer-token auth, correlation ids, graceful stop.

A small servicer defined here exercises the bootstrap; it is test scaffolding for
the server plumbing, not a stand-in for the registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from sluice.common.grpc_server import GrpcServer, actor_of
from sluice.common.log import current_correlation_id
from sluice.v1 import registry_pb2, registry_pb2_grpc

TOKEN = "s3cret-token"
SERVICE = "sluice.v1.Registry"


class EchoRegistry(registry_pb2_grpc.RegistryServicer):  # type: ignore[misc]
    async def GetOnlineEndpoint(self, request, context):  # type: ignore[no-untyped-def] # noqa: N802
        spec = registry_pb2.OnlineEndpointSpec(
            name=request.name, description=f"{current_correlation_id()}|{actor_of(context)}"
        )
        return registry_pb2.OnlineEndpoint(spec=spec)


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    srv = GrpcServer(
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE],
        register=lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(EchoRegistry(), s),
        admin_token=TOKEN,
    )
    await srv.start()
    yield srv
    await srv.stop(0.5)


async def test_health_reports_serving_for_server_and_service(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services_without_credentials(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in reply.list_services_response.service}
            break
    assert {SERVICE, "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing credentials"),
        ((("authorization", "Bearer wrong"),), "invalid credentials"),
        ((("authorization", TOKEN),), "invalid credentials"),
    ],
)
async def test_calls_without_the_admin_token_are_unauthenticated(
    server: GrpcServer, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetOnlineEndpoint(
                registry_pb2.GetOnlineEndpointRequest(name="e"), metadata=metadata
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith(
        f"{message}: send 'authorization: Bearer <admin token>'"
    )


async def test_correlation_id_and_actor_reach_the_handler_and_the_log(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with capture_logs() as logs:
            reply = await stub.GetOnlineEndpoint(
                registry_pb2.GetOnlineEndpointRequest(name="e1"),
                metadata=(
                    ("authorization", f"Bearer {TOKEN}"),
                    ("x-correlation-id", "cid-7"),
                    ("actor", "carol"),
                ),
            )
    assert reply.spec.description == "cid-7|carol"
    calls = [entry for entry in logs if entry["event"] == "grpc_call"]
    assert calls and calls[0]["method"] == "/sluice.v1.Registry/GetOnlineEndpoint"
    assert calls[0]["code"] == "OK"


async def test_a_fresh_correlation_id_is_made_when_none_is_sent(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        reply = await stub.GetOnlineEndpoint(
            registry_pb2.GetOnlineEndpointRequest(name="e1"),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
    cid, actor = reply.spec.description.split("|")
    assert len(cid) == 32
    assert actor == "admin"


async def test_graceful_stop_reports_not_serving() -> None:
    srv = GrpcServer(
        host="127.0.0.1", port=0, service_names=[], register=lambda s: None, unauthenticated=True
    )
    await srv.start()
    async with grpc.aio.insecure_channel(srv.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        await srv._health.enter_graceful_shutdown()
        assert (await stub.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
    await srv.stop(0)


def test_a_server_without_a_token_or_tls_refuses_to_exist() -> None:
    with pytest.raises(RuntimeError, match="SLUICE_ADMIN_TOKEN is not set"):
        GrpcServer(host="127.0.0.1", port=0, service_names=[], register=lambda s: None)
    with pytest.raises(RuntimeError, match="SLUICE_ADMIN_TOKEN is not set"):
        GrpcServer(
            host="127.0.0.1", port=0, service_names=[], register=lambda s: None, admin_token=""
        )
