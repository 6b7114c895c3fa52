"""Per-user tokens and roles of the management API (proto/sluice/v1/access.proto).

Besides the platform's admin token, the registry accepts tokens it issued:
`sluice_<id>_<secret>`, stored as the SHA-256 of the secret in `user_tokens` (a
stolen database copy gives no usable token; the secret is shown once, at create).
Each has a user and a role, checked on every call of the registry's services:

- reader: Get*/List* of Registry, Workspace (REST) and Assets, except GetCredentials,
  ListKeys and GetToken (endpoint keys and scoring tokens are secrets, as Azure's
  Reader role cannot list keys);
- deployer: every Registry, Workspace and Assets call;
- admin: also the Access service (creating, listing and revoking tokens).

The token's user is the `actor` of everything the call changes (events, audit),
whatever `actor` metadata the client sends. The other services (batch, metrics,
provisioner) accept the admin token only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from enum import IntEnum

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.grpc_server import Verdict
from sluice.common.mongo import Document
from sluice.registry.domain import NotFound
from sluice.v1 import access_pb2

TOKENS = "user_tokens"
PREFIX = "sluice_"
ACCESS_SERVICE = "sluice.v1.Access"
READER_SERVICES = ("sluice.v1.Registry", "sluice.v1.Workspace", "sluice.v1.Assets")
# Workspace.ListKeys is the REST API's GetCredentials.
SECRET_READS = frozenset({"GetCredentials", "GetToken", "ListKeys"})


class Role(IntEnum):
    reader = access_pb2.ROLE_READER
    deployer = access_pb2.ROLE_DEPLOYER
    admin = access_pb2.ROLE_ADMIN


def allowed(role: Role, method: str) -> bool:
    """May `role` call `method` ("/sluice.v1.Registry/GetOnlineEndpoint")?"""
    service, _, name = method.strip("/").partition("/")
    if role is Role.admin:
        return True
    if service not in READER_SERVICES:
        return False
    if role is Role.deployer:
        return True
    return name.startswith(("Get", "List")) and name not in SECRET_READS


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


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
    )


class TokenStore:
    """The `user_tokens` collection (written by the registry only)."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._tokens = db[TOKENS]

    async def create(
        self, user: str, role: Role, description: str, actor: str
    ) -> tuple[Document, str]:
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        doc: Document = {
            "_id": token_id,
            "user": user,
            "role": int(role),
            "description": description,
            "hash": _hash(secret),
            "created_at": datetime.now(UTC),
            "created_by": actor,
            "revoked_at": None,
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

    async def verify(self, token: str, method: str) -> Verdict:
        """The call's verdict for a token that is not the admin token."""
        token_id, _, secret = token.removeprefix(PREFIX).partition("_")
        doc = await self._tokens.find_one({"_id": token_id}) if token.startswith(PREFIX) else None
        if doc is None or not hmac.compare_digest(doc["hash"], _hash(secret)):
            return Verdict(message="invalid credentials: not a token of this platform")
        if doc.get("revoked_at") is not None:
            return Verdict(message=f"token {token_id} was revoked")
        role = Role(doc["role"])
        if not allowed(role, method):
            return Verdict(
                code=grpc.StatusCode.PERMISSION_DENIED,
                message=f"{doc['user']} ({role.name}) may not call {method.rsplit('/', 1)[-1]}",
            )
        return Verdict(actor=doc["user"])
