"""sluice.v1.Workspace's registered assets: models, environments and data in Azure's shape.

The same three calls per kind (list/get containers, list/get/PUT versions) over
AssetService, so the CLI's gRPC Assets service and REST share the rules: the checks of
a new version, archiving that only hides a version (as on Azure), one event per change. A PUT
creates the version (201) or changes what Azure lets change on an existing one
(description, tags, stage, isArchived); If-Match and the ETag header work as for endpoints.
"""

from __future__ import annotations

from typing import TypeVar, cast

from sluice.common.assets import AssetDoc, AssetKind
from sluice.common.grpc_server import actor_of
from sluice.registry import arm_assets
from sluice.registry.api import domain_errors
from sluice.registry.assets import AssetService
from sluice.registry.domain import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sluice.registry.http_meta import Ctx, answer, if_match
from sluice.v1 import workspace_pb2 as ws

R = TypeVar("R", ws.ModelVersionResource, ws.EnvironmentVersionResource, ws.DataVersionResource)


def _container_etag(docs: list[AssetDoc]) -> int:
    """A container's ETag: it changes whenever one of its versions does."""
    return sum(d.meta.version for d in docs)


class AssetResources:
    """The Workspace servicer's asset calls (WorkspaceApi inherits them)."""

    _assets: AssetService

    async def _containers(
        self, kind: AssetKind, request: ws.ListAssetContainersRequest
    ) -> ws.AssetContainerList:
        view = arm_assets.list_view(request.list_view_type)
        groups = (await self._assets.versions_by_name(kind)).values()
        found = [arm_assets.container(kind, docs) for docs in groups]
        return ws.AssetContainerList(
            value=[c for c in found if arm_assets.shown(c.properties.is_archived, view)]
        )

    async def _container_docs(self, kind: AssetKind, name: str) -> list[AssetDoc]:
        docs = (await self._assets.versions_by_name(kind)).get(name)
        if not docs:
            raise NotFound(f"{kind.value} {name!r} does not exist (GET /{kind.plural} lists them)")
        return docs

    async def _container(
        self, kind: AssetKind, name: str, context: Ctx | None = None
    ) -> ws.AssetContainerResource:
        docs = await self._container_docs(kind, name)
        if context is not None:
            await context.send_initial_metadata([("etag", f'"{_container_etag(docs)}"')])
        return arm_assets.container(kind, docs)

    async def _put_container(
        self, kind: AssetKind, request: ws.PutAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        """Azure's container PUT: here only isArchived acts (archive or restore every
        version); a container is created by its first version."""
        _, expected = if_match(context)
        name, res = request.name, request.resource
        if res.name and res.name != request.name:
            raise InvalidArgument(
                f"the body names {res.name!r} but the path {name!r}; they must match"
            )
        props = res.properties
        if props.description or props.tags or props.properties:
            raise InvalidArgument(
                "properties.description, tags and properties: Sluice keeps them on versions "
                f"(PUT /{kind.plural}/{name}/versions/{{version}})"
            )
        docs = (await self._assets.versions_by_name(kind)).get(name)
        if not docs:
            raise FailedPrecondition(
                f"{kind.value} {name!r} has no versions: a container is created by its first "
                f"version (PUT /{kind.plural}/{name}/versions/1)"
            )
        if expected is not None and expected != _container_etag(docs):
            raise Conflict(
                f'{kind.value} {name!r} is at ETag "{_container_etag(docs)}", not '
                f'"{expected}"; GET it again'
            )
        archived = all(d.archived for d in docs)
        if props.is_archived and not archived:
            await self._assets.archive(kind, name, "", actor_of(context))
        elif archived and not props.is_archived:
            await self._assets.restore(kind, name, "", actor_of(context))
        return await self._container(kind, name, context)

    async def _versions(
        self, kind: AssetKind, request: ws.ListAssetVersionsRequest
    ) -> list[arm_assets.VersionResource]:
        view = arm_assets.list_view(request.list_view_type)
        docs = await self._assets.list_versions(kind, request.name, include_archived=True)
        if not docs:
            await self._container(kind, request.name)  # 404 for a name with no versions
        return [
            arm_assets.version(d, await self._assets.used_by(kind, d.spec.name, d.spec.version))
            for d in arm_assets.sort_versions(docs)
            if arm_assets.shown(d.archived, view)
        ]

    async def _version(
        self, kind: AssetKind, request: ws.GetAssetVersionRequest, context: Ctx
    ) -> arm_assets.VersionResource:
        doc = await self._assets.get(kind, f"{request.name}:{request.version}")
        await answer(context, doc.meta)
        used = await self._assets.used_by(kind, request.name, request.version)
        return arm_assets.version(doc, used)

    async def _put_version(
        self, kind: AssetKind, name: str, version: str, resource: R, context: Ctx
    ) -> arm_assets.VersionResource:
        conditional, expected = if_match(context)
        wanted = arm_assets.version_spec(kind, name, version, resource)
        archived = resource.properties.is_archived
        actor = actor_of(context)
        try:
            current = await self._assets.get(kind, f"{name}:{version}")
        except NotFound:
            current = None
        if current is None:
            if conditional:
                raise Conflict(
                    f"{kind.value} {name!r} version {version!r} does not exist, so no "
                    "If-Match ETag can match it"
                )
            doc = await self._assets.create(wanted, actor)
            if archived:
                doc = await self._assets.update(
                    doc,
                    description=doc.spec.description,
                    tags=doc.spec.tags,
                    archived=True,
                    expected_version=None,
                    actor=actor,
                )
        else:
            changed = arm_assets.immutable_change(current.spec, wanted)
            if changed:
                raise AlreadyExists(
                    f"{kind.value} {name!r} version {version!r} exists and versions are "
                    f"immutable: {changed} cannot change (only description, tags, stage and "
                    "isArchived can); PUT a new version"
                )
            doc = await self._assets.update(
                current,
                description=wanted.description,
                tags=wanted.tags,
                stage=wanted.stage,
                archived=archived,
                expected_version=expected,
                actor=actor,
            )
        await answer(context, doc.meta, created=current is None)
        return arm_assets.version(doc, await self._assets.used_by(kind, name, version))

    # ---- the calls, per kind -------------------------------------------------------------

    @domain_errors
    async def ListModelContainers(
        self, request: ws.ListAssetContainersRequest, context: Ctx
    ) -> ws.AssetContainerList:
        return await self._containers(AssetKind.model, request)

    @domain_errors
    async def GetModelContainer(
        self, request: ws.GetAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._container(AssetKind.model, request.name, context)

    @domain_errors
    async def PutModelContainer(
        self, request: ws.PutAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._put_container(AssetKind.model, request, context)

    @domain_errors
    async def ListModelVersions(
        self, request: ws.ListAssetVersionsRequest, context: Ctx
    ) -> ws.ModelVersionList:
        found = await self._versions(AssetKind.model, request)
        return ws.ModelVersionList(value=cast(list[ws.ModelVersionResource], found))

    @domain_errors
    async def GetModelVersion(
        self, request: ws.GetAssetVersionRequest, context: Ctx
    ) -> ws.ModelVersionResource:
        return cast(ws.ModelVersionResource, await self._version(AssetKind.model, request, context))

    @domain_errors
    async def PutModelVersion(
        self, request: ws.PutModelVersionRequest, context: Ctx
    ) -> ws.ModelVersionResource:
        found = await self._put_version(
            AssetKind.model, request.name, request.version, request.resource, context
        )
        return cast(ws.ModelVersionResource, found)

    @domain_errors
    async def ListEnvironmentContainers(
        self, request: ws.ListAssetContainersRequest, context: Ctx
    ) -> ws.AssetContainerList:
        return await self._containers(AssetKind.environment, request)

    @domain_errors
    async def GetEnvironmentContainer(
        self, request: ws.GetAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._container(AssetKind.environment, request.name, context)

    @domain_errors
    async def PutEnvironmentContainer(
        self, request: ws.PutAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._put_container(AssetKind.environment, request, context)

    @domain_errors
    async def ListEnvironmentVersions(
        self, request: ws.ListAssetVersionsRequest, context: Ctx
    ) -> ws.EnvironmentVersionList:
        found = await self._versions(AssetKind.environment, request)
        return ws.EnvironmentVersionList(value=cast(list[ws.EnvironmentVersionResource], found))

    @domain_errors
    async def GetEnvironmentVersion(
        self, request: ws.GetAssetVersionRequest, context: Ctx
    ) -> ws.EnvironmentVersionResource:
        return cast(
            ws.EnvironmentVersionResource,
            await self._version(AssetKind.environment, request, context),
        )

    @domain_errors
    async def PutEnvironmentVersion(
        self, request: ws.PutEnvironmentVersionRequest, context: Ctx
    ) -> ws.EnvironmentVersionResource:
        found = await self._put_version(
            AssetKind.environment, request.name, request.version, request.resource, context
        )
        return cast(ws.EnvironmentVersionResource, found)

    @domain_errors
    async def ListDataContainers(
        self, request: ws.ListAssetContainersRequest, context: Ctx
    ) -> ws.AssetContainerList:
        return await self._containers(AssetKind.data, request)

    @domain_errors
    async def GetDataContainer(
        self, request: ws.GetAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._container(AssetKind.data, request.name, context)

    @domain_errors
    async def PutDataContainer(
        self, request: ws.PutAssetContainerRequest, context: Ctx
    ) -> ws.AssetContainerResource:
        return await self._put_container(AssetKind.data, request, context)

    @domain_errors
    async def ListDataVersions(
        self, request: ws.ListAssetVersionsRequest, context: Ctx
    ) -> ws.DataVersionList:
        found = await self._versions(AssetKind.data, request)
        return ws.DataVersionList(value=cast(list[ws.DataVersionResource], found))

    @domain_errors
    async def GetDataVersion(
        self, request: ws.GetAssetVersionRequest, context: Ctx
    ) -> ws.DataVersionResource:
        return cast(ws.DataVersionResource, await self._version(AssetKind.data, request, context))

    @domain_errors
    async def PutDataVersion(
        self, request: ws.PutDataVersionRequest, context: Ctx
    ) -> ws.DataVersionResource:
        found = await self._put_version(
            AssetKind.data, request.name, request.version, request.resource, context
        )
        return cast(ws.DataVersionResource, found)
