"""gRPC face of per-user tokens (proto/sluice/v1/access.proto; the rules: access.py)."""

from __future__ import annotations

import re
from typing import Any

from sluice.common.access import Role
from sluice.common.grpc_server import actor_of
from sluice.registry.access import TokenStore, view
from sluice.registry.api import domain_errors
from sluice.registry.domain import InvalidArgument
from sluice.v1 import access_pb2, access_pb2_grpc

USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_DESCRIPTION = 256
MAX_EXPIRY_S = 10 * 366 * 86400  # ten years: beyond, say "never" (0)


class AccessApi(access_pb2_grpc.AccessServicer):
    def __init__(self, store: TokenStore):
        self._store = store

    @domain_errors
    async def CreateToken(self, request: Any, context: Any) -> Any:
        if not USER_RE.match(request.user):
            raise InvalidArgument(
                "user must be 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                f"letter or digit; got {request.user!r}"
            )
        if request.role not in {r.value for r in Role}:
            raise InvalidArgument("role must be reader, deployer or admin")
        if len(request.description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION} characters")
        if not 0 <= request.expires_in_s <= MAX_EXPIRY_S:
            raise InvalidArgument(
                f"expires_in_s must be between 1 and {MAX_EXPIRY_S} seconds (0: never "
                f"expires); got {request.expires_in_s}"
            )
        doc, secret = await self._store.create(
            request.user,
            Role(request.role),
            request.description,
            actor_of(context),
            request.expires_in_s,
        )
        return access_pb2.CreatedToken(token=view(doc), secret=secret)

    @domain_errors
    async def ListTokens(self, request: Any, context: Any) -> Any:
        docs = await self._store.list(request.include_revoked)
        return access_pb2.ListTokensResponse(tokens=[view(d) for d in docs])

    @domain_errors
    async def RevokeToken(self, request: Any, context: Any) -> Any:
        return view(await self._store.revoke(request.id))
