"""Per-user tokens of the management API (proto/sluice/v1/access.proto): issuing them.

Besides the platform's admin token, every management service accepts tokens the
registry issued: `sluice_<id>_<secret>`, stored as the SHA-256 of the secret in
`user_tokens` (a stolen database copy gives no usable token; the secret is shown
once, at create), each with a user, a role and optionally an expiry. The rules per
role and the check are `sluice.common.access` (shared by the registry, batch,
metrics and provisioner services). The token's user is the `actor` of everything
the call changes (events, audit), whatever `actor` metadata the client sends.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.access import PREFIX, TOKENS, Role, secret_hash
from sluice.common.mongo import Document
from sluice.registry.domain import NotFound
from sluice.v1 import access_pb2


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def view(doc: Document) -> access_pb2.UserToken:
    return access_pb2.UserToken(
        id=doc["_id"],
        user=doc["user"],
        role=doc["role"],
        description=doc.get("description", ""),
        created_at=_timestamp(doc["created_at"]),
        created_by=doc.get("created_by", ""),
        revoked_at=_timestamp(doc.get("revoked_at")),
        expires_at=_timestamp(doc.get("expires_at")),
    )


class TokenStore:
    """The `user_tokens` collection (written by the registry only)."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._tokens = db[TOKENS]

    async def create(
        self, user: str, role: Role, description: str, actor: str, expires_in_s: int = 0
    ) -> tuple[Document, str]:
        """A new token; `expires_in_s` > 0: refused that many seconds from now."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as Mongo keeps it
        doc: Document = {
            "_id": token_id,
            "user": user,
            "role": int(role),
            "description": description,
            "hash": secret_hash(secret),
            "created_at": now,
            "created_by": actor,
            "revoked_at": None,
            "expires_at": now + timedelta(seconds=expires_in_s) if expires_in_s else None,
        }
        await self._tokens.insert_one(doc)
        return doc, f"{PREFIX}{token_id}_{secret}"

    async def list(self, include_revoked: bool) -> list[Document]:
        query: Document = {} if include_revoked else {"revoked_at": None}
        return [doc async for doc in self._tokens.find(query).sort("created_at", 1)]

    async def revoke(self, token_id: str) -> Document:
        doc = await self._tokens.find_one_and_update(
            {"_id": token_id},
            {"$set": {"revoked_at": datetime.now(UTC)}},
            return_document=True,
        )
        if doc is None:
            raise NotFound(f"no token {token_id!r}: see `sluice token list`")
        return doc
