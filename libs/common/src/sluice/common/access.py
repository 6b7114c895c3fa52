"""Checking per-user tokens of the management API, in every service that serves it.

The registry issues tokens (`sluice token create`, registry/access.py) and keeps
them in `user_tokens`: `sluice_<id>_<secret>`, stored as the SHA-256 of the secret.
The registry, batch, metrics and provisioner services all accept them besides the
admin token, with the same rules per role:

- reader: Get*/List* calls and the read-only calls that are not named so
  (`READ_ONLY_CALLS`: Cost Management's query, a POST over REST; the download of a
  stored artifact, as Azure's Reader may download registered models), except those that
  return secrets or what scoring code and callers wrote (`SECRET_READS`: endpoint
  keys — GetCredentials, and ListKeys of the Azure-shaped REST API (Workspace) —,
  scoring tokens, logs, collected data, request logs), as Azure's Reader role cannot
  list keys or read logs. Nor does a reader see the last log lines that a failed
  deployment's or job's status message carries (`status_for_caller`);
- deployer: every call but the Access service's;
- admin: also the Access service (creating, listing and revoking tokens).

A token past its `expires_at`, or revoked, is UNAUTHENTICATED with a message
saying so; a call the role may not make is PERMISSION_DENIED naming the user.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from enum import IntEnum

import grpc
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.grpc_server import Verdict, caller_reads_logs
from sluice.common.mongo import Document
from sluice.v1 import access_pb2

TOKENS = "user_tokens"
PREFIX = "sluice_"
ACCESS_SERVICE = "sluice.v1.Access"
SECRET_READS = frozenset(
    {
        "GetCredentials",
        "ListKeys",
        "GetToken",
        "GetLogs",
        "GetDeploymentLogs",  # the Workspace REST API's getLogs
        "GetCollected",
        "GetRequestLogs",
    }
)


# Calls that change nothing although their names do not say Get or List. An artifact
# (model, data, code) is read as its asset is, which a reader may: Azure's Reader role
# downloads registered models. A job's output is not here: it is what a model made of
# callers' data, read as logs are (`Batch/DownloadJobOutput`, deployers and admins).
READ_ONLY_CALLS = frozenset(
    {"/sluice.v1.Metrics/QueryCosts", "/sluice.v1.Registry/DownloadArtifact"}
)
# Who may call this may read logs, and so the log tail of a status message.
LOGS_CALL = "/sluice.v1.Provisioner/GetLogs"
# Between a status message and the last log lines of the instance or worker that failed.
LOG_TAIL = "\nLast log lines:\n"
LOG_TAIL_HIDDEN = (
    "\nLast log lines: not shown, as logs are not shown to readers "
    "(a deployer or admin token reads them)"
)


class Role(IntEnum):
    reader = access_pb2.ROLE_READER
    deployer = access_pb2.ROLE_DEPLOYER
    admin = access_pb2.ROLE_ADMIN


def allowed(role: Role, method: str) -> bool:
    """May `role` call `method` ("/sluice.v1.Registry/GetOnlineEndpoint")?"""
    service, _, name = method.strip("/").partition("/")
    if role is Role.admin:
        return True
    if service == ACCESS_SERVICE:
        return False
    if role is Role.deployer:
        return True
    if f"/{service}/{name}" in READ_ONLY_CALLS:
        return True
    return name.startswith(("Get", "List")) and name not in SECRET_READS


def with_log_tail(message: str, lines: str) -> str:
    """A failure's status message with the last lines its instance or worker wrote."""
    return f"{message}{LOG_TAIL}{lines}"


def status_for_caller(message: str) -> str:
    """A status message as the current caller may read it: without its log tail (what
    scoring code printed) for a caller that may not read logs."""
    if caller_reads_logs():
        return message
    head, found, _ = message.partition(LOG_TAIL)
    return head + LOG_TAIL_HIDDEN if found else message


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(value: datetime) -> datetime:
    """Mongo returns naive UTC datetimes unless the client is tz-aware."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UserTokens:
    """Verifies tokens against `user_tokens` (a service's `token_verifier`)."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._tokens = db[TOKENS]

    async def verify(self, token: str, method: str) -> Verdict:
        """The call's verdict for a token that is not the admin token."""
        token_id, _, secret = token.removeprefix(PREFIX).partition("_")
        doc = await self._tokens.find_one({"_id": token_id}) if token.startswith(PREFIX) else None
        if doc is None or not hmac.compare_digest(doc["hash"], secret_hash(secret)):
            return Verdict(message="invalid credentials: not a token of this platform")
        if doc.get("revoked_at") is not None:
            return Verdict(message=f"token {token_id} was revoked")
        expires = doc.get("expires_at")
        if expires is not None and _aware(expires) <= datetime.now(UTC):
            when = _aware(expires).isoformat(timespec="seconds")
            return Verdict(
                message=f"token {token_id} of {doc['user']} expired at {when}: "
                "ask an admin for a new one (`sluice token create`)"
            )
        role = Role(doc["role"])
        if not allowed(role, method):
            return Verdict(
                code=grpc.StatusCode.PERMISSION_DENIED,
                message=f"{doc['user']} ({role.name}) may not call {method.rsplit('/', 1)[-1]}",
            )
        return Verdict(actor=doc["user"], reads_logs=allowed(role, LOGS_CALL))
