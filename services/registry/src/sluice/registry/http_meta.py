"""The REST listener's HTTP headers as the Workspace calls see them (gRPC metadata).

Envoy's transcoder passes request headers as metadata and sends response metadata back as
headers: `If-Match` makes a write conditional, `ETag` names the version answered,
`x-sluice-created` (turned into 201 Created by the listener's Lua filter) marks a PUT
that created its resource, and `Azure-AsyncOperation` names the operation a write started
(sluice.registry.operations).
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from sluice.common.resources import Meta
from sluice.registry import arm, operations

CREATED_HEADER = "x-sluice-created"
Ctx: TypeAlias = grpc.aio.ServicerContext


def if_match(context: Ctx) -> tuple[bool, int | None]:
    """(an If-Match header was sent, the version it names; None for `*`)."""
    for key, value in context.invocation_metadata() or ():
        if key == "if-match" and isinstance(value, str):
            return True, arm.parse_etag(value)
    return False, None


async def answer(context: Ctx, meta: Meta, *, created: bool = False, operation: str = "") -> None:
    """Send the resource's ETag (and, for a PUT that created it, the 201 marker; for a
    write, the `Azure-AsyncOperation` to poll)."""
    headers = [("etag", f'"{arm.etag(meta)}"')]
    if created:
        headers.append((CREATED_HEADER, "true"))
    if operation:
        headers.append((operations.HEADER, operation))
    await context.send_initial_metadata(headers)
