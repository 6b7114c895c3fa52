"""gRPC face of the asset registry (proto/sluice/v1/assets.proto).

Kept beside api.py rather than in it: the asset calls are a service of their
own, with the same error mapping (`domain_errors`) and the same admin token.
"""

from __future__ import annotations

from typing import Any

from sluice.common.assets import AssetDoc, AssetKind, AssetSpec
from sluice.common.grpc_server import actor_of
from sluice.common.protoconv import to_proto
from sluice.registry.api import _spec, domain_errors
from sluice.registry.assets import AssetService, page_token
from sluice.registry.domain import InvalidArgument
from sluice.registry.service import DEFAULT_PAGE, MAX_PAGE
from sluice.v1 import assets_pb2, assets_pb2_grpc, common_pb2

# A page of ListAssets ends before this many bytes: with the registry's limits on a
# version's text, far below the 4 MiB a gRPC client receives by default.
PAGE_BYTES = 1024 * 1024


def _kind(value: str) -> AssetKind:
    try:
        return AssetKind(value)
    except ValueError:
        known = ", ".join(k.value for k in AssetKind)
        raise InvalidArgument(f"asset kind must be one of {known}, got {value!r}") from None


class AssetsApi(assets_pb2_grpc.AssetsServicer):
    def __init__(self, assets: AssetService):
        self._assets = assets

    async def _view(self, doc: AssetDoc) -> assets_pb2.Asset:
        msg = to_proto(doc, assets_pb2.Asset())
        spec = doc.spec
        msg.used_by.extend(await self._assets.used_by(spec.asset_kind, spec.name, spec.version))
        return msg

    @domain_errors
    async def CreateAsset(self, request: Any, context: Any) -> Any:
        _kind(request.spec.asset_kind)
        spec = _spec(request.spec, AssetSpec)
        return await self._view(await self._assets.create(spec, actor_of(context)))

    @domain_errors
    async def GetAsset(self, request: Any, context: Any) -> Any:
        return await self._view(await self._assets.get(_kind(request.kind), request.reference))

    @domain_errors
    async def ListAssets(self, request: Any, context: Any) -> Any:
        """One page: up to page_size versions, ending before PAGE_BYTES (one at least)."""
        size = request.page.page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}, got {size}")
        docs = await self._assets.list_versions(
            _kind(request.kind), request.name, request.include_archived, request.page.page_token
        )
        views: list[assets_pb2.Asset] = []
        used = 0
        for doc in docs[:size]:
            view = await self._view(doc)
            if views and used + view.ByteSize() > PAGE_BYTES:
                break
            views.append(view)
            used += view.ByteSize()
        more = len(views) < len(docs)
        token = page_token(docs[len(views) - 1], by_name=not request.name) if more else ""
        return assets_pb2.ListAssetsResponse(
            assets=views, page=common_pb2.PageResponse(next_page_token=token)
        )

    @domain_errors
    async def ArchiveAsset(self, request: Any, context: Any) -> Any:
        kind = _kind(request.kind)
        docs = await self._assets.archive(kind, request.name, request.version, actor_of(context))
        return await self._view(docs[-1])

    @domain_errors
    async def RestoreAsset(self, request: Any, context: Any) -> Any:
        kind = _kind(request.kind)
        docs = await self._assets.restore(kind, request.name, request.version, actor_of(context))
        return await self._view(docs[-1])

    @domain_errors
    async def UpdateAsset(self, request: Any, context: Any) -> Any:
        kind = _kind(request.kind)
        if not request.version:
            raise InvalidArgument(f"{kind.value} {request.name!r}: name the version to update")
        current = await self._assets.get(kind, f"{request.name}:{request.version}")
        doc = await self._assets.update(
            current,
            description=request.description,
            tags=dict(request.tags),
            stage=request.stage,
            archived=current.archived,
            expected_version=request.expected_version or None,
            actor=actor_of(context),
        )
        return await self._view(doc)
