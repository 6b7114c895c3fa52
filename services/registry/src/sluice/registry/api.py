"""gRPC face of the registry: protobuf <-> resource models, domain errors -> status codes.

The only module of the registry that imports generated protobuf code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import wraps
from typing import Literal, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from sluice.common.access import status_for_caller
from sluice.common.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    in_thread,
    pack_chunks,
)
from sluice.common.grpc_server import actor_of
from sluice.common.protoconv import ConversionError, M, to_model, to_proto
from sluice.common.resources import (
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    BatchEndpointDoc,
    BatchEndpointSpec,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
)
from sluice.registry.credentials import Token
from sluice.registry.domain import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sluice.registry.service import RegistryService
from sluice.v1 import common_pb2, registry_pb2, registry_pb2_grpc

CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
}

# ---- error mapping -----------------------------------------------------------------------

Api = TypeVar("Api")
Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)
Behaviour = Callable[[Api, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def domain_errors(
    behaviour: Behaviour[Api, Request, Response],
) -> Behaviour[Api, Request, Response]:
    """Turn a DomainError into the matching gRPC status with its message."""

    @wraps(behaviour)
    async def call(self: Api, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await behaviour(self, request, context)
        except DomainError as exc:
            await context.abort(CODES[type(exc)], str(exc))
            raise AssertionError("unreachable: abort raises") from exc

    return call


class _Versioned(Protocol):
    expected_version: int

    def HasField(self, field_name: Literal["expected_version"]) -> bool: ...


def _spec(message: Message, model: type[M]) -> M:
    try:
        return to_model(message, model)
    except ConversionError as exc:
        raise InvalidArgument(str(exc)) from exc


def _expected(request: _Versioned) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


class RegistryApi(registry_pb2_grpc.RegistryServicer):
    def __init__(self, service: RegistryService, artifacts: ArtifactStore, scoring_base: str):
        self._svc = service
        self._artifacts = artifacts
        # "https://localhost:8443/endpoints/{name}" (see app.scoring_base): scoring URIs
        # are derived, never stored.
        self._scoring_base = scoring_base

    # ---- views ----------------------------------------------------------------------------

    def _online_endpoint(self, doc: OnlineEndpointDoc) -> registry_pb2.OnlineEndpoint:
        msg = to_proto(doc, registry_pb2.OnlineEndpoint())
        base = self._scoring_base.format(name=doc.spec.name)
        msg.scoring_uri = f"{base}/score"
        msg.swagger_uri = f"{base}/swagger.json"
        return msg

    @staticmethod
    def _online_deployment(doc: OnlineDeploymentDoc) -> registry_pb2.OnlineDeployment:
        msg = to_proto(doc, registry_pb2.OnlineDeployment())
        msg.meta.status_message = status_for_caller(doc.meta.status_message)
        return msg

    def _batch_endpoint(self, doc: BatchEndpointDoc) -> registry_pb2.BatchEndpoint:
        msg = to_proto(doc, registry_pb2.BatchEndpoint())
        msg.scoring_uri = self._scoring_base.format(name=doc.spec.name) + "/jobs"
        return msg

    @staticmethod
    def _batch_deployment(doc: BatchDeploymentDoc) -> registry_pb2.BatchDeployment:
        msg = to_proto(doc, registry_pb2.BatchDeployment())
        msg.meta.status_message = status_for_caller(doc.meta.status_message)
        return msg

    @staticmethod
    def _token(token: Token) -> registry_pb2.Credentials:
        msg = registry_pb2.Credentials(
            auth_mode=common_pb2.AUTH_MODE_AML_TOKEN, access_token=token.value
        )
        msg.expiry_time.FromDatetime(token.expires_at)
        msg.refresh_after_time.FromDatetime(token.refresh_after)
        return msg

    # ---- online endpoints -----------------------------------------------------------------

    @domain_errors
    async def CreateOnlineEndpoint(
        self, request: registry_pb2.CreateOnlineEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        spec = _spec(request.spec, OnlineEndpointSpec)
        return self._online_endpoint(
            await self._svc.create_online_endpoint(spec, actor_of(context))
        )

    @domain_errors
    async def GetOnlineEndpoint(
        self, request: registry_pb2.GetOnlineEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        msg = self._online_endpoint(await self._svc.get_online_endpoint(request.name))
        msg.applied_version = await self._svc.applied_version(msg.spec.name)
        return msg

    @domain_errors
    async def ListOnlineEndpoints(
        self, request: registry_pb2.ListOnlineEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListOnlineEndpointsResponse:
        page = await self._svc.list_online_endpoints(
            request.page.page_size, request.page.page_token
        )
        return registry_pb2.ListOnlineEndpointsResponse(
            endpoints=[self._online_endpoint(d) for d in page.items],
            page=common_pb2.PageResponse(next_page_token=page.next_token),
        )

    @domain_errors
    async def UpdateOnlineEndpoint(
        self, request: registry_pb2.UpdateOnlineEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        spec = _spec(request.spec, OnlineEndpointSpec)
        doc = await self._svc.update_online_endpoint(
            spec,
            traffic=dict(request.spec.traffic) if request.has_traffic else None,
            mirror_traffic=(
                dict(request.spec.mirror_traffic) if request.has_mirror_traffic else None
            ),
            expected_version=_expected(request),
            actor=actor_of(context),
        )
        return self._online_endpoint(doc)

    @domain_errors
    async def DeleteOnlineEndpoint(
        self, request: registry_pb2.DeleteOnlineEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteResponse:
        await self._svc.delete_online_endpoint(request.name, actor_of(context))
        return registry_pb2.DeleteResponse()

    async def _set_traffic(
        self,
        request: registry_pb2.SetTrafficRequest,
        context: grpc.aio.ServicerContext,
        *,
        mirror: bool,
    ) -> registry_pb2.OnlineEndpoint:
        shares: Mapping[str, int] = dict(request.traffic)
        doc = await self._svc.set_traffic(
            request.endpoint_name,
            traffic=None if mirror else shares,
            mirror_traffic=shares if mirror else None,
            expected_version=_expected(request),
            actor=actor_of(context),
        )
        return self._online_endpoint(doc)

    @domain_errors
    async def SetTraffic(
        self, request: registry_pb2.SetTrafficRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        return await self._set_traffic(request, context, mirror=False)

    @domain_errors
    async def SetMirrorTraffic(
        self, request: registry_pb2.SetTrafficRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        return await self._set_traffic(request, context, mirror=True)

    @domain_errors
    async def GetCredentials(
        self, request: registry_pb2.GetCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Credentials:
        creds = await self._svc.get_credentials(request.endpoint_name, actor_of(context))
        if creds.token is not None:
            return self._token(creds.token)
        return registry_pb2.Credentials(
            auth_mode=common_pb2.AUTH_MODE_KEY,
            primary_key=creds.primary_key,
            secondary_key=creds.secondary_key,
        )

    @domain_errors
    async def RegenerateKeys(
        self, request: registry_pb2.RegenerateKeysRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineEndpoint:
        which = {
            registry_pb2.KEY_TYPE_PRIMARY: "primary",
            registry_pb2.KEY_TYPE_SECONDARY: "secondary",
        }
        doc = await self._svc.regenerate_key(
            request.endpoint_name, which.get(request.key_type, "unspecified"), actor_of(context)
        )
        return self._online_endpoint(doc)

    @domain_errors
    async def GetToken(
        self, request: registry_pb2.GetTokenRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Credentials:
        return self._token(await self._svc.get_token(request.endpoint_name, actor_of(context)))

    @domain_errors
    async def GetJwks(
        self, request: registry_pb2.GetJwksRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.Jwks:
        return registry_pb2.Jwks(json=self._svc.jwks, issuer="sluice-registry")

    # ---- online deployments ---------------------------------------------------------------

    @domain_errors
    async def CreateOnlineDeployment(
        self, request: registry_pb2.CreateOnlineDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineDeployment:
        spec = _spec(request.spec, OnlineDeploymentSpec)
        doc = await self._svc.create_online_deployment(spec, actor_of(context))
        return self._online_deployment(doc)

    @domain_errors
    async def GetOnlineDeployment(
        self, request: registry_pb2.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineDeployment:
        doc = await self._svc.get_online_deployment(request.endpoint_name, request.name)
        return self._online_deployment(doc)

    @domain_errors
    async def ListOnlineDeployments(
        self, request: registry_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListOnlineDeploymentsResponse:
        page = await self._svc.list_online_deployments(
            request.endpoint_name, request.page.page_size, request.page.page_token
        )
        return registry_pb2.ListOnlineDeploymentsResponse(
            deployments=[self._online_deployment(d) for d in page.items],
            page=common_pb2.PageResponse(next_page_token=page.next_token),
        )

    @domain_errors
    async def UpdateOnlineDeployment(
        self, request: registry_pb2.UpdateOnlineDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.OnlineDeployment:
        spec = _spec(request.spec, OnlineDeploymentSpec)
        doc = await self._svc.update_online_deployment(spec, _expected(request), actor_of(context))
        return self._online_deployment(doc)

    @domain_errors
    async def DeleteOnlineDeployment(
        self, request: registry_pb2.DeleteDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteResponse:
        await self._svc.delete_online_deployment(
            request.endpoint_name, request.name, actor_of(context)
        )
        return registry_pb2.DeleteResponse()

    # ---- batch ----------------------------------------------------------------------------

    @domain_errors
    async def CreateBatchEndpoint(
        self, request: registry_pb2.CreateBatchEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchEndpoint:
        spec = _spec(request.spec, BatchEndpointSpec)
        return self._batch_endpoint(await self._svc.create_batch_endpoint(spec, actor_of(context)))

    @domain_errors
    async def GetBatchEndpoint(
        self, request: registry_pb2.GetBatchEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchEndpoint:
        return self._batch_endpoint(await self._svc.get_batch_endpoint(request.name))

    @domain_errors
    async def ListBatchEndpoints(
        self, request: registry_pb2.ListBatchEndpointsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListBatchEndpointsResponse:
        page = await self._svc.list_batch_endpoints(request.page.page_size, request.page.page_token)
        return registry_pb2.ListBatchEndpointsResponse(
            endpoints=[self._batch_endpoint(d) for d in page.items],
            page=common_pb2.PageResponse(next_page_token=page.next_token),
        )

    @domain_errors
    async def UpdateBatchEndpoint(
        self, request: registry_pb2.UpdateBatchEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchEndpoint:
        spec = _spec(request.spec, BatchEndpointSpec)
        doc = await self._svc.update_batch_endpoint(spec, _expected(request), actor_of(context))
        return self._batch_endpoint(doc)

    @domain_errors
    async def DeleteBatchEndpoint(
        self, request: registry_pb2.DeleteBatchEndpointRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteResponse:
        await self._svc.delete_batch_endpoint(request.name, actor_of(context))
        return registry_pb2.DeleteResponse()

    @domain_errors
    async def SetDefaultDeployment(
        self, request: registry_pb2.SetDefaultDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchEndpoint:
        doc = await self._svc.set_default_deployment(
            request.endpoint_name, request.deployment_name, actor_of(context)
        )
        return self._batch_endpoint(doc)

    @domain_errors
    async def CreateBatchDeployment(
        self, request: registry_pb2.CreateBatchDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchDeployment:
        spec = _spec(request.spec, BatchDeploymentSpec)
        doc = await self._svc.create_batch_deployment(spec, request.set_default, actor_of(context))
        return self._batch_deployment(doc)

    @domain_errors
    async def GetBatchDeployment(
        self, request: registry_pb2.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchDeployment:
        doc = await self._svc.get_batch_deployment(request.endpoint_name, request.name)
        return self._batch_deployment(doc)

    @domain_errors
    async def ListBatchDeployments(
        self, request: registry_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListBatchDeploymentsResponse:
        page = await self._svc.list_batch_deployments(
            request.endpoint_name, request.page.page_size, request.page.page_token
        )
        return registry_pb2.ListBatchDeploymentsResponse(
            deployments=[self._batch_deployment(d) for d in page.items],
            page=common_pb2.PageResponse(next_page_token=page.next_token),
        )

    @domain_errors
    async def UpdateBatchDeployment(
        self, request: registry_pb2.UpdateBatchDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.BatchDeployment:
        spec = _spec(request.spec, BatchDeploymentSpec)
        doc = await self._svc.update_batch_deployment(spec, _expected(request), actor_of(context))
        return self._batch_deployment(doc)

    @domain_errors
    async def DeleteBatchDeployment(
        self, request: registry_pb2.DeleteDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteResponse:
        await self._svc.delete_batch_deployment(
            request.endpoint_name, request.name, actor_of(context)
        )
        return registry_pb2.DeleteResponse()

    # ---- artifacts ------------------------------------------------------------------------

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[registry_pb2.ArtifactChunk],
        context: grpc.aio.ServicerContext,
    ) -> common_pb2.ArtifactRef:
        first = await anext(request_iterator, None)
        if first is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty upload")
            raise AssertionError("unreachable: abort raises")

        async def data() -> AsyncIterator[bytes]:
            yield first.data
            async for chunk in request_iterator:
                yield chunk.data

        try:
            ref = await self._artifacts.ingest(first.name, first.is_directory, data())
        except ArtifactError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable: abort raises") from exc
        return common_pb2.ArtifactRef(
            digest=ref.digest, name=ref.name, is_directory=ref.is_directory
        )

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.ArtifactChunk]:
        """The stored artifact packed again (the same canonical archive as its upload's),
        read from disk a chunk at a time in a worker thread."""
        try:
            ref = self._artifacts.stored(request.digest)
        except ArtifactNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise AssertionError("unreachable: abort raises") from exc
        except ArtifactError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable: abort raises") from exc
        name, is_directory = ref.name, ref.is_directory
        try:
            async for data in in_thread(pack_chunks(self._artifacts.path_of(ref))):
                yield registry_pb2.ArtifactChunk(name=name, is_directory=is_directory, data=data)
                name, is_directory = "", False  # only the first chunk names it
        except (OSError, ArtifactError) as exc:  # removed or changed while it was being sent
            await context.abort(grpc.StatusCode.ABORTED, f"{request.digest}: {exc}")
