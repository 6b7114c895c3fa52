"""gRPC face of the REST API: sluice.v1.Workspace, the registry's resources in Azure's shape.

Envoy's gRPC-JSON transcoder calls these methods for the management listener's REST
paths (proto/sluice/v1/workspace.proto). HTTP headers arrive as gRPC metadata and
response metadata leaves as HTTP headers, which gives Azure's write semantics:

- PUT creates (201 Created: the `x-sluice-created` header, which the listener's Lua
  filter turns into the status) or replaces (200 OK);
- `If-Match: "<etag>"` makes a write conditional; a stale ETag, or one for a resource
  that does not exist, answers ABORTED, which the listener maps to 412;
- every resource answer carries its `ETag` header;
- an endpoint or deployment names its operation (properties.properties'
  `AzureAsyncOperationUri`, and a write's `Azure-AsyncOperation` header), which
  GetOperationStatus answers (sluice.registry.operations).

The use cases, validation and events are RegistryService's, as for sluice.v1.Registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from google.protobuf import empty_pb2

from sluice.common.artifacts import ArtifactError, ArtifactStore, artifact_uri
from sluice.common.grpc_server import actor_of, metadata_value
from sluice.common.resources import (
    BatchDeploymentDoc,
    BatchEndpointDoc,
    Meta,
    OnlineDeployment,
    OnlineEndpointDoc,
)
from sluice.registry import arm, operations
from sluice.registry.api import domain_errors
from sluice.registry.assets import AssetService
from sluice.registry.assets_arm_api import AssetResources
from sluice.registry.domain import Conflict, InvalidArgument, NotFound
from sluice.registry.http_meta import Ctx, answer, if_match
from sluice.registry.operations import Operation
from sluice.registry.service import RegistryService
from sluice.v1 import workspace_pb2 as ws
from sluice.v1 import workspace_pb2_grpc

T = TypeVar("T")


async def _exists(get: Callable[[], Awaitable[T]]) -> T | None:
    try:
        return await get()
    except NotFound:
        return None


def _missing(what: str) -> Conflict:
    return Conflict(f"{what} does not exist, so no If-Match ETag can match it")


def _page(count: int) -> int:
    if count < 0:
        raise InvalidArgument(f"count must be between 1 and 1000, got {count}")
    return count


def _next_link(path: str, count: int, token: str) -> str:
    if not token:
        return ""
    return f"{path}?skipToken={token}" + (f"&count={count}" if count else "")


Tracked = (
    ws.OnlineEndpointTrackedResource
    | ws.OnlineDeploymentTrackedResource
    | ws.BatchEndpointTrackedResource
    | ws.BatchDeploymentTrackedResource
)
R = TypeVar("R", bound=Tracked)


def _with_operation(context: Ctx, resource: R, kind: str, meta: Meta, *names: str) -> R:
    """`resource` with its operation's URI in properties.properties, absolute when the call
    came through the REST listener (which passes the host the client called)."""
    base = metadata_value(context, operations.BASE_HEADER)
    uri = Operation.of(kind, meta, *names).uri(base)
    resource.properties.properties[operations.PROPERTY] = uri
    return resource


def _online_deployment(context: Ctx, doc: OnlineDeployment) -> ws.OnlineDeploymentTrackedResource:
    resource = arm.online_deployment(doc)
    return _with_operation(context, resource, "od", doc.meta, doc.spec.endpoint_name, doc.spec.name)


def _batch_deployment(context: Ctx, doc: BatchDeploymentDoc) -> ws.BatchDeploymentTrackedResource:
    resource = arm.batch_deployment(doc)
    return _with_operation(context, resource, "bd", doc.meta, doc.spec.endpoint_name, doc.spec.name)


async def _answer_write(context: Ctx, resource: Tracked, meta: Meta, *, created: bool) -> None:
    uri = resource.properties.properties[operations.PROPERTY]
    await answer(context, meta, created=created, operation=uri)


class WorkspaceApi(AssetResources, workspace_pb2_grpc.WorkspaceServicer):
    def __init__(
        self,
        service: RegistryService,
        assets: AssetService,
        artifacts: ArtifactStore,
        scoring_base: str,
    ):
        self._svc = service
        self._assets = assets
        self._artifacts = artifacts
        self._scoring_base = scoring_base

    # ---- online endpoints -------------------------------------------------------------------

    def _online_endpoint(
        self, context: Ctx, doc: OnlineEndpointDoc, applied: int = 0
    ) -> ws.OnlineEndpointTrackedResource:
        resource = arm.online_endpoint(doc, self._scoring_base, applied)
        return _with_operation(context, resource, "oe", doc.meta, doc.spec.name)

    @domain_errors
    async def PutOnlineEndpoint(
        self, request: ws.PutOnlineEndpointRequest, context: Ctx
    ) -> ws.OnlineEndpointTrackedResource:
        conditional, expected = if_match(context)
        spec, traffic, mirror = arm.online_endpoint_spec(request.name, request.resource)
        actor = actor_of(context)
        current = await _exists(lambda: self._svc.get_online_endpoint(request.name))
        if current is None:
            if conditional:
                raise _missing(f"online endpoint {request.name!r}")
            doc = await self._svc.create_online_endpoint(spec, actor)
        else:
            doc = await self._svc.update_online_endpoint(
                spec,
                traffic=traffic,
                mirror_traffic=mirror,
                expected_version=expected,
                actor=actor,
                replace=True,  # a PUT's split is the whole split (Azure's PUT replaces)
            )
        resource = self._online_endpoint(context, doc)
        await _answer_write(context, resource, doc.meta, created=current is None)
        return resource

    @domain_errors
    async def GetOnlineEndpoint(
        self, request: ws.GetResourceRequest, context: Ctx
    ) -> ws.OnlineEndpointTrackedResource:
        doc = await self._svc.get_online_endpoint(request.name)
        applied = await self._svc.applied_version(request.name)
        resource = self._online_endpoint(context, doc, applied)
        await context.send_initial_metadata([("etag", f'"{resource.etag}"')])
        return resource

    @domain_errors
    async def ListOnlineEndpoints(
        self, request: ws.ListResourcesRequest, context: Ctx
    ) -> ws.OnlineEndpointList:
        page = await self._svc.list_online_endpoints(_page(request.count), request.skip_token)
        return ws.OnlineEndpointList(
            value=[self._online_endpoint(context, d) for d in page.items],
            next_link=_next_link("/onlineEndpoints", request.count, page.next_token),
        )

    @domain_errors
    async def DeleteOnlineEndpoint(
        self, request: ws.GetResourceRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._svc.delete_online_endpoint(request.name, actor_of(context))
        return empty_pb2.Empty()

    @domain_errors
    async def PatchOnlineEndpoint(
        self, request: ws.PatchRequest, context: Ctx
    ) -> ws.OnlineEndpointTrackedResource:
        _, expected = if_match(context)
        if request.resource.HasField("sku"):
            raise InvalidArgument("an online endpoint has no sku; PATCH its deployments' sku")
        current = await self._svc.get_online_endpoint(request.name)
        tags = self._patched_tags(request.resource, current.spec.tags)
        doc = await self._svc.update_online_endpoint(
            current.spec.model_copy(update={"tags": tags}),
            traffic=None,
            mirror_traffic=None,
            expected_version=expected,
            actor=actor_of(context),
        )
        resource = self._online_endpoint(context, doc)
        await _answer_write(context, resource, doc.meta, created=False)
        return resource

    @staticmethod
    def _patched_tags(
        resource: ws.PartialResource | ws.PartialBatchDeployment, current: dict[str, str]
    ) -> dict[str, str]:
        if not resource.HasField("tags"):
            return current
        return arm.patch_tags(resource.tags)

    @domain_errors
    async def ListKeys(self, request: ws.GetResourceRequest, context: Ctx) -> ws.EndpointAuthKeys:
        creds = await self._svc.get_credentials(request.name, actor_of(context))
        if creds.token is not None:
            raise InvalidArgument(
                f"online endpoint {request.name!r} uses AMLToken auth: it has no keys "
                f"(POST /onlineEndpoints/{request.name}/token)"
            )
        return ws.EndpointAuthKeys(primary_key=creds.primary_key, secondary_key=creds.secondary_key)

    @domain_errors
    async def RegenerateKeys(self, request: ws.RegenerateKeysBody, context: Ctx) -> empty_pb2.Empty:
        which = request.key_type.lower()
        if which not in ("primary", "secondary"):
            raise InvalidArgument(f"keyType {request.key_type!r} is not Primary or Secondary")
        await self._svc.regenerate_key(request.name, which, actor_of(context))
        return empty_pb2.Empty()

    @domain_errors
    async def GetToken(self, request: ws.GetResourceRequest, context: Ctx) -> ws.EndpointAuthToken:
        token = await self._svc.get_token(request.name, actor_of(context))
        return ws.EndpointAuthToken(
            access_token=token.value,
            expiry_time_utc=int(token.expires_at.timestamp()),
            refresh_after_time_utc=int(token.refresh_after.timestamp()),
            token_type="Bearer",  # noqa: S106 - the scheme, not a secret
        )

    async def _set_traffic(
        self, request: ws.SetTrafficBody, context: Ctx, *, mirror: bool
    ) -> ws.OnlineEndpointTrackedResource:
        _, expected = if_match(context)
        shares = dict(request.traffic)
        doc = await self._svc.set_traffic(
            request.name,
            traffic=None if mirror else shares,
            mirror_traffic=shares if mirror else None,
            expected_version=expected,
            actor=actor_of(context),
        )
        resource = self._online_endpoint(context, doc)
        await _answer_write(context, resource, doc.meta, created=False)
        return resource

    @domain_errors
    async def SetTraffic(
        self, request: ws.SetTrafficBody, context: Ctx
    ) -> ws.OnlineEndpointTrackedResource:
        return await self._set_traffic(request, context, mirror=False)

    @domain_errors
    async def SetMirrorTraffic(
        self, request: ws.SetTrafficBody, context: Ctx
    ) -> ws.OnlineEndpointTrackedResource:
        return await self._set_traffic(request, context, mirror=True)

    # ---- online deployments -----------------------------------------------------------------

    @domain_errors
    async def PutOnlineDeployment(
        self, request: ws.PutOnlineDeploymentRequest, context: Ctx
    ) -> ws.OnlineDeploymentTrackedResource:
        conditional, expected = if_match(context)
        spec = arm.online_deployment_spec(request.endpoint_name, request.name, request.resource)
        actor = actor_of(context)
        current = await _exists(
            lambda: self._svc.get_online_deployment(request.endpoint_name, request.name)
        )
        if current is None:
            if conditional:
                raise _missing(f"deployment {request.endpoint_name}/{request.name}")
            await self._svc.create_online_deployment(spec, actor)
        else:
            await self._svc.update_online_deployment(spec, expected, actor)
        doc = await self._svc.get_online_deployment(request.endpoint_name, request.name)
        resource = _online_deployment(context, doc)
        await _answer_write(context, resource, doc.meta, created=current is None)
        return resource

    @domain_errors
    async def GetOnlineDeployment(
        self, request: ws.GetChildRequest, context: Ctx
    ) -> ws.OnlineDeploymentTrackedResource:
        doc = await self._svc.get_online_deployment(request.endpoint_name, request.name)
        await answer(context, doc.meta)
        return _online_deployment(context, doc)

    @domain_errors
    async def ListOnlineDeployments(
        self, request: ws.ListChildrenRequest, context: Ctx
    ) -> ws.OnlineDeploymentList:
        page = await self._svc.list_online_deployments(
            request.endpoint_name, _page(request.count), request.skip_token
        )
        path = f"/onlineEndpoints/{request.endpoint_name}/deployments"
        return ws.OnlineDeploymentList(
            value=[_online_deployment(context, d) for d in page.items],
            next_link=_next_link(path, request.count, page.next_token),
        )

    @domain_errors
    async def PatchOnlineDeployment(
        self, request: ws.PatchRequest, context: Ctx
    ) -> ws.OnlineDeploymentTrackedResource:
        _, expected = if_match(context)
        current = await self._svc.get_online_deployment(request.endpoint_name, request.name)
        changes: dict[str, object] = {
            "tags": self._patched_tags(request.resource, current.spec.tags)
        }
        if request.resource.HasField("sku"):
            if request.resource.sku.capacity < 1:
                raise InvalidArgument(
                    f"sku.capacity must be at least 1, got {request.resource.sku.capacity}"
                )
            changes["instance_count"] = request.resource.sku.capacity
        await self._svc.update_online_deployment(
            current.spec.model_copy(update=changes), expected, actor_of(context)
        )
        doc = await self._svc.get_online_deployment(request.endpoint_name, request.name)
        resource = _online_deployment(context, doc)
        await _answer_write(context, resource, doc.meta, created=False)
        return resource

    @domain_errors
    async def DeleteOnlineDeployment(
        self, request: ws.GetChildRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._svc.delete_online_deployment(
            request.endpoint_name, request.name, actor_of(context)
        )
        return empty_pb2.Empty()

    # ---- batch endpoints --------------------------------------------------------------------

    @domain_errors
    async def PutBatchEndpoint(
        self, request: ws.PutBatchEndpointRequest, context: Ctx
    ) -> ws.BatchEndpointTrackedResource:
        conditional, expected = if_match(context)
        spec = arm.batch_endpoint_spec(request.name, request.resource)
        actor = actor_of(context)
        current = await _exists(lambda: self._svc.get_batch_endpoint(request.name))
        if current is None:
            if conditional:
                raise _missing(f"batch endpoint {request.name!r}")
            doc = await self._svc.create_batch_endpoint(spec, actor)
        else:
            doc = await self._svc.update_batch_endpoint(spec, expected, actor)
        resource = self._batch_endpoint(context, doc)
        await _answer_write(context, resource, doc.meta, created=current is None)
        return resource

    @domain_errors
    async def GetBatchEndpoint(
        self, request: ws.GetResourceRequest, context: Ctx
    ) -> ws.BatchEndpointTrackedResource:
        doc = await self._svc.get_batch_endpoint(request.name)
        await answer(context, doc.meta)
        return self._batch_endpoint(context, doc)

    @domain_errors
    async def ListBatchEndpoints(
        self, request: ws.ListResourcesRequest, context: Ctx
    ) -> ws.BatchEndpointList:
        page = await self._svc.list_batch_endpoints(_page(request.count), request.skip_token)
        return ws.BatchEndpointList(
            value=[self._batch_endpoint(context, d) for d in page.items],
            next_link=_next_link("/batchEndpoints", request.count, page.next_token),
        )

    @domain_errors
    async def DeleteBatchEndpoint(
        self, request: ws.GetResourceRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._svc.delete_batch_endpoint(request.name, actor_of(context))
        return empty_pb2.Empty()

    @domain_errors
    async def PatchBatchEndpoint(
        self, request: ws.PatchRequest, context: Ctx
    ) -> ws.BatchEndpointTrackedResource:
        _, expected = if_match(context)
        if request.resource.HasField("sku"):
            raise InvalidArgument("a batch endpoint has no sku; PATCH may change its tags only")
        current = await self._svc.get_batch_endpoint(request.name)
        tags = self._patched_tags(request.resource, current.spec.tags)
        doc = await self._svc.update_batch_endpoint(
            current.spec.model_copy(update={"tags": tags}), expected, actor_of(context)
        )
        resource = self._batch_endpoint(context, doc)
        await _answer_write(context, resource, doc.meta, created=False)
        return resource

    def _batch_endpoint(
        self, context: Ctx, doc: BatchEndpointDoc
    ) -> ws.BatchEndpointTrackedResource:
        resource = arm.batch_endpoint(doc, self._scoring_base)
        return _with_operation(context, resource, "be", doc.meta, doc.spec.name)

    # ---- batch deployments ------------------------------------------------------------------

    @domain_errors
    async def PatchBatchDeployment(
        self, request: ws.PatchBatchDeploymentRequest, context: Ctx
    ) -> ws.BatchDeploymentTrackedResource:
        _, expected = if_match(context)
        current = await self._svc.get_batch_deployment(request.endpoint_name, request.name)
        changes: dict[str, object] = {
            "tags": self._patched_tags(request.resource, current.spec.tags)
        }
        if request.resource.properties.HasField("description"):
            changes["description"] = request.resource.properties.description
        doc = await self._svc.update_batch_deployment(
            current.spec.model_copy(update=changes), expected, actor_of(context)
        )
        resource = _batch_deployment(context, doc)
        await _answer_write(context, resource, doc.meta, created=False)
        return resource

    @domain_errors
    async def PutBatchDeployment(
        self, request: ws.PutBatchDeploymentRequest, context: Ctx
    ) -> ws.BatchDeploymentTrackedResource:
        conditional, expected = if_match(context)
        spec = arm.batch_deployment_spec(request.endpoint_name, request.name, request.resource)
        actor = actor_of(context)
        current = await _exists(
            lambda: self._svc.get_batch_deployment(request.endpoint_name, request.name)
        )
        if current is None:
            if conditional:
                raise _missing(f"batch deployment {request.endpoint_name}/{request.name}")
            doc = await self._svc.create_batch_deployment(spec, False, actor)
        else:
            doc = await self._svc.update_batch_deployment(spec, expected, actor)
        resource = _batch_deployment(context, doc)
        await _answer_write(context, resource, doc.meta, created=current is None)
        return resource

    @domain_errors
    async def GetBatchDeployment(
        self, request: ws.GetChildRequest, context: Ctx
    ) -> ws.BatchDeploymentTrackedResource:
        doc = await self._svc.get_batch_deployment(request.endpoint_name, request.name)
        await answer(context, doc.meta)
        return _batch_deployment(context, doc)

    @domain_errors
    async def ListBatchDeployments(
        self, request: ws.ListChildrenRequest, context: Ctx
    ) -> ws.BatchDeploymentList:
        page = await self._svc.list_batch_deployments(
            request.endpoint_name, _page(request.count), request.skip_token
        )
        path = f"/batchEndpoints/{request.endpoint_name}/deployments"
        return ws.BatchDeploymentList(
            value=[_batch_deployment(context, d) for d in page.items],
            next_link=_next_link(path, request.count, page.next_token),
        )

    @domain_errors
    async def DeleteBatchDeployment(
        self, request: ws.GetChildRequest, context: Ctx
    ) -> empty_pb2.Empty:
        await self._svc.delete_batch_deployment(
            request.endpoint_name, request.name, actor_of(context)
        )
        return empty_pb2.Empty()

    # ---- operations ---------------------------------------------------------------------------

    @domain_errors
    async def GetOperationStatus(
        self, request: ws.GetOperationStatusRequest, context: Ctx
    ) -> ws.OperationStatus:
        if request.location.lower() != arm.LOCATION:
            raise NotFound(f"location {request.location!r}: this workspace's is {arm.LOCATION!r}")
        op = Operation.parse(request.name)
        meta = await _exists(lambda: self._meta_of(op))
        if meta is None or not op.is_of(meta):
            raise NotFound(
                f"operation {op.name} is not found: its resource no longer exists (deleted, "
                "or deleted and created again)"
            )
        status = operations.status_of(meta)
        reply = ws.OperationStatus(id=op.path, name=op.name, status=status)
        if status == "Failed":
            reply.error.code = "ResourceOperationFailure"
            reply.error.message = meta.status_message or "it failed (no message was kept)"
        return reply

    async def _meta_of(self, op: Operation) -> Meta:
        """The meta of the resource `op` names (NotFound when there is none)."""
        if op.kind == "oe":
            return (await self._svc.get_online_endpoint(op.endpoint)).meta
        if op.kind == "od":
            return (await self._svc.get_online_deployment(op.endpoint, op.deployment)).meta
        if op.kind == "be":
            return (await self._svc.get_batch_endpoint(op.endpoint)).meta
        return (await self._svc.get_batch_deployment(op.endpoint, op.deployment)).meta

    # ---- artifacts ----------------------------------------------------------------------------

    @domain_errors
    async def UploadArtifactArchive(
        self, request: ws.UploadArtifactArchiveRequest, context: Ctx
    ) -> ws.UploadedArtifact:
        """The body is stored as the gRPC stream's chunks would be: the same archive gives
        the same digest either way."""
        archive = request.archive.data
        if not archive:
            raise InvalidArgument(
                f"the body is empty: send an uncompressed tar archive holding {request.name!r}"
            )

        async def body() -> AsyncIterator[bytes]:
            yield archive

        try:
            ref = await self._artifacts.ingest(request.name, request.is_directory, body())
        except ArtifactError as exc:
            raise InvalidArgument(f"artifact {request.name!r}: {exc}") from None
        return ws.UploadedArtifact(
            uri=artifact_uri(ref),
            digest=ref.digest,
            name=ref.name,
            is_directory=ref.is_directory,
        )
