"""Azure's long-running operations for the REST API's writes to endpoints and deployments.

Azure answers a PUT (or PATCH) on an endpoint or deployment at once, with the resource
still Creating or Updating, and names an operation to poll: the `Azure-AsyncOperation`
header and `properties.properties.AzureAsyncOperationUri`, whose GET answers
`{"status": "InProgress" | "Succeeded" | "Failed" | "Canceled", "error": {...}}`
(azureml-examples' deploy-rest.sh waits on it with curl and jq).

Sluice keeps no operation records: an operation's id names its resource (kind, names and
creation time), and its status is that resource's provisioning state. A later write to
the same resource therefore shows in it too; once the resource is deleted, or deleted and
created again under the same name, the operation is not found.

The URI is absolute, as Azure's: the listener's Lua filter passes the scheme and host the
client called (the `x-sluice-base` header), so the URI works from where the client is.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime

from sluice.common.azure_ids import SUBSCRIPTION
from sluice.common.resources import Meta, ProvisioningState
from sluice.registry.arm import LOCATION
from sluice.registry.domain import InvalidArgument

BASE_HEADER = "x-sluice-base"
HEADER = "azure-asyncoperation"
PROPERTY = "AzureAsyncOperationUri"
PATH = (
    f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices"
    f"/locations/{LOCATION}/mfeOperationsStatus/"
)
# Azure's operation ids start with the kind of resource: oe (online endpoint), od (online
# deployment), be and bd (batch).
_ID = re.compile(r"^(oe|od|be|bd):([A-Za-z0-9-]+)(?::([A-Za-z0-9-]+))?:([0-9]{1,20})$")

STATUS = {
    ProvisioningState.creating: "InProgress",
    ProvisioningState.provisioning: "InProgress",
    ProvisioningState.updating: "InProgress",
    ProvisioningState.deleting: "InProgress",
    ProvisioningState.succeeded: "Succeeded",
    ProvisioningState.failed: "Failed",
    ProvisioningState.canceled: "Canceled",
}


def _micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly (a naive time is UTC, as stored)."""
    return calendar.timegm(at.utctimetuple()) * 1_000_000 + at.microsecond


@dataclass(frozen=True)
class Operation:
    kind: str  # oe, od, be or bd
    endpoint: str
    deployment: str  # "" for an endpoint
    created: int  # its resource's creation time, microseconds since the epoch

    @classmethod
    def of(cls, kind: str, meta: Meta, endpoint: str, deployment: str = "") -> Operation:
        return cls(kind, endpoint, deployment, _micros(meta.created_at))

    @classmethod
    def parse(cls, name: str) -> Operation:
        match = _ID.match(name)
        deployment_kind = name[:2] in ("od", "bd")
        if match is None or bool(match.group(3)) != deployment_kind:
            raise InvalidArgument(
                f"{name!r} is not an operation id of this workspace (the last part of an "
                "AzureAsyncOperationUri a PUT or PATCH answered)"
            )
        return cls(match.group(1), match.group(2), match.group(3) or "", int(match.group(4)))

    @property
    def name(self) -> str:
        names = f"{self.endpoint}:{self.deployment}" if self.deployment else self.endpoint
        return f"{self.kind}:{names}:{self.created}"

    @property
    def path(self) -> str:
        return PATH + self.name

    def uri(self, base: str) -> str:
        return base + self.path

    def is_of(self, meta: Meta) -> bool:
        """Whether `meta` is the resource this operation wrote (not a namesake made since)."""
        return _micros(meta.created_at) == self.created


def status_of(meta: Meta) -> str:
    return STATUS[meta.provisioning_state]
