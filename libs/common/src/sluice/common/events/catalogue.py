"""Every event of the platform: its subject, its type and its typed payload.

Events are thin: they say *that* something changed (what, which version) and
consumers re-read current state from MongoDB, so a late or repeated event
never leaves a stale view. Payloads keep the field names the first untyped
events had (`kind`, `name`, `endpoint`, `version`, ...), so audit subscribers
written against docs/events.md keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    """Base of every payload: immutable; unknown fields are ignored (newer senders)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# ---- registry: a resource changed --------------------------------------------------


class EndpointChanged(Payload):
    kind: Literal["endpoint"] = "endpoint"
    name: str
    version: int


class TrafficChanged(Payload):
    kind: Literal["traffic"] = "traffic"
    name: str = Field(description="the endpoint")
    version: int
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]


class KeysRegenerated(Payload):
    kind: Literal["keys"] = "keys"
    name: str = Field(description="the endpoint")
    version: int
    key_type: Literal["primary", "secondary"]


class DeploymentChanged(Payload):
    kind: Literal["deployment"] = "deployment"
    name: str
    endpoint: str
    version: int


class BatchEndpointChanged(Payload):
    kind: Literal["batch_endpoint"] = "batch_endpoint"
    name: str
    version: int


class AssetChanged(Payload):
    kind: Literal["model", "environment", "data"]
    name: str = Field(description="`<asset name>:<asset version>`")
    version: int = Field(description="the asset document's version (archive/restore bump it)")
    asset_name: str
    asset_version: str


class BatchDeploymentChanged(Payload):
    kind: Literal["batch_deployment"] = "batch_deployment"
    name: str
    endpoint: str
    version: int


class BatchDeploymentFailed(BatchDeploymentChanged):
    reason: str = Field(description="why its environment does not build (the installer's end)")


# ---- provisioner: what happened to instances ---------------------------------------


class DeploymentProgress(Payload):
    endpoint: str
    name: str = Field(description="the deployment")
    version: int


class DeploymentFailed(Payload):
    endpoint: str
    name: str = Field(description="the deployment")
    version: int
    reason: str


class InstanceReady(Payload):
    endpoint: str
    name: str = Field(description="the deployment")
    instance: str
    address: str


class InstanceDraining(Payload):
    endpoint: str
    name: str = Field(description="the deployment")
    instance: str
    address: str
    reason: str


class InstanceStopped(Payload):
    endpoint: str
    name: str = Field(description="the deployment")
    instance: str
    reason: str


# ---- traffic: what the gateway did with a configuration ----------------------------


class TrafficApplied(Payload):
    snapshot: str
    endpoints: dict[str, int] = Field(description="endpoint name -> version now live")
    routed: dict[str, list[str]] = Field(
        default_factory=dict,
        description="`endpoint/deployment` -> the instance addresses Envoy balances over",
    )


class TrafficRejected(Payload):
    snapshot: str
    type: str = Field(description="the xDS resource type Envoy refused")
    error: str
    endpoints: dict[str, int]


# ---- metrics: alert rules -----------------------------------------------------------


class AlertChanged(Payload):
    rule: str
    metric: str
    endpoint: str
    deployment: str | None
    aggregation: str
    operator: str
    threshold: float
    window_s: int
    for_s: int
    value: float | None = Field(description="the aggregated value that fired or resolved it")


class AutoscaleChanged(Payload):
    kind: Literal["autoscale"] = "autoscale"
    name: str
    endpoint: str
    deployment: str
    version: int


class AutoscaleScaled(Payload):
    name: str = Field(description="the autoscale setting")
    endpoint: str
    deployment: str
    profile: str = Field(description="the profile that was active")
    reason: str = Field(description="rule | bounds (a profile's min/max) | default (no metrics)")
    rule: str = Field(
        description='the rule that decided, e.g. "CpuUtilizationPercentage > 70 avg 5m -> out 2"'
    )
    rule_index: int | None
    metric: str
    value: float | None = Field(description="the rule's observed, aggregated value")
    old_count: int
    new_count: int


# ---- batch: jobs ----------------------------------------------------------------------


class BatchJobChanged(Payload):
    name: str = Field(description="the job")
    endpoint: str
    deployment: str
    state: str = Field(description="Queued, Running, Completed, Failed or Canceled")
    progress: dict[str, Any] = Field(description="the job's progress counters")
    cost: dict[str, Any] = Field(description="instance type, worker seconds, price, cost")


PayloadT = TypeVar("PayloadT", bound=Payload)


@dataclass(frozen=True)
class EventSpec(Generic[PayloadT]):
    """One event: subject `<prefix>.<entity>.<verb>`, type `sluice.<entity>.<verb>`."""

    entity: str
    verb: str
    payload: type[PayloadT]
    source: str
    description: str

    @property
    def type(self) -> str:
        return f"sluice.{self.entity}.{self.verb}"

    def subject(self, prefix: str) -> str:
        return f"{prefix}.{self.entity}.{self.verb}"


REGISTRY = "sluice/registry"
PROVISIONER = "sluice/provisioner"
TRAFFIC = "sluice/traffic"
METRICS = "sluice/metrics"
BATCH = "sluice/batch"


def _changes(
    entity: str, payload: type[PayloadT], what: str
) -> tuple[EventSpec[PayloadT], EventSpec[PayloadT], EventSpec[PayloadT]]:
    return (
        EventSpec(entity, "created", payload, REGISTRY, f"{what} was created"),
        EventSpec(entity, "updated", payload, REGISTRY, f"{what}'s spec changed"),
        EventSpec(entity, "deleted", payload, REGISTRY, f"{what} was deleted"),
    )


ENDPOINT_CREATED, ENDPOINT_UPDATED, ENDPOINT_DELETED = _changes(
    "endpoint", EndpointChanged, "an online endpoint"
)
TRAFFIC_CHANGED = EventSpec(
    "traffic", "changed", TrafficChanged, REGISTRY, "the live or mirror split of an endpoint"
)
KEYS_REGENERATED = EventSpec(
    "keys", "regenerated", KeysRegenerated, REGISTRY, "a primary or secondary key was replaced"
)
DEPLOYMENT_CREATED, DEPLOYMENT_UPDATED, DEPLOYMENT_DELETED = _changes(
    "deployment", DeploymentChanged, "an online deployment"
)
BATCH_ENDPOINT_CREATED, BATCH_ENDPOINT_UPDATED, BATCH_ENDPOINT_DELETED = _changes(
    "batch_endpoint", BatchEndpointChanged, "a batch endpoint"
)
BATCH_DEPLOYMENT_CREATED, BATCH_DEPLOYMENT_UPDATED, BATCH_DEPLOYMENT_DELETED = _changes(
    "batch_deployment", BatchDeploymentChanged, "a batch deployment"
)
BATCH_DEPLOYMENT_READY = EventSpec(
    "batch_deployment",
    "ready",
    BatchDeploymentChanged,
    BATCH,
    "the version's environment is built: its jobs start at once",
)
BATCH_DEPLOYMENT_FAILED = EventSpec(
    "batch_deployment",
    "failed",
    BatchDeploymentFailed,
    BATCH,
    "the version's environment does not build: its jobs are refused until an update",
)
ASSET_EVENTS = {
    (kind, verb): EventSpec(
        kind, verb, AssetChanged, REGISTRY, f"a registered {kind} version was {verb}"
    )
    for kind in ("model", "environment", "data")
    for verb in ("created", "updated", "archived", "restored")
}
DEPLOYMENT_PROVISIONING = EventSpec(
    "deployment",
    "provisioning",
    DeploymentProgress,
    PROVISIONER,
    "the provisioner started on a new deployment",
)
DEPLOYMENT_UPDATING = EventSpec(
    "deployment", "updating", DeploymentProgress, PROVISIONER, "the provisioner started rolling"
)
DEPLOYMENT_READY = EventSpec(
    "deployment",
    "ready",
    DeploymentProgress,
    PROVISIONER,
    "every requested instance of the version is ready",
)
DEPLOYMENT_FAILED = EventSpec(
    "deployment", "failed", DeploymentFailed, PROVISIONER, "the version cannot run"
)
INSTANCE_READY = EventSpec(
    "instance", "ready", InstanceReady, PROVISIONER, "an instance passed readiness"
)
INSTANCE_DRAINING = EventSpec(
    "instance",
    "draining",
    InstanceDraining,
    PROVISIONER,
    "an instance left routing; it stops once the gateway no longer routes it",
)
INSTANCE_STOPPED = EventSpec(
    "instance", "stopped", InstanceStopped, PROVISIONER, "an instance stopped"
)
TRAFFIC_APPLIED = EventSpec(
    "traffic",
    "applied",
    TrafficApplied,
    TRAFFIC,
    "every connected Envoy ACKed a configuration with these endpoint versions",
)
TRAFFIC_REJECTED = EventSpec(
    "traffic", "rejected", TrafficRejected, TRAFFIC, "Envoy NACKed a configuration"
)
ALERT_FIRED = EventSpec("alert", "fired", AlertChanged, METRICS, "an alert rule held for `for_s`")
ALERT_RESOLVED = EventSpec(
    "alert", "resolved", AlertChanged, METRICS, "a firing alert rule no longer holds"
)
AUTOSCALE_CHANGED = {
    verb: EventSpec(
        "autoscale", verb, AutoscaleChanged, METRICS, f"an autoscale setting was {verb}"
    )
    for verb in ("created", "updated", "deleted")
}
AUTOSCALE_SCALED = EventSpec(
    "autoscale", "scaled", AutoscaleScaled, METRICS, "the autoscaler changed a deployment's count"
)
BATCH_JOB = {
    state: EventSpec("batch.job", state, BatchJobChanged, BATCH, f"a batch job is {state}")
    for state in ("queued", "running", "completed", "failed", "canceled")
}

ALL: tuple[EventSpec[Any], ...] = (
    ENDPOINT_CREATED,
    ENDPOINT_UPDATED,
    ENDPOINT_DELETED,
    TRAFFIC_CHANGED,
    KEYS_REGENERATED,
    DEPLOYMENT_CREATED,
    DEPLOYMENT_UPDATED,
    DEPLOYMENT_DELETED,
    BATCH_ENDPOINT_CREATED,
    BATCH_ENDPOINT_UPDATED,
    BATCH_ENDPOINT_DELETED,
    BATCH_DEPLOYMENT_CREATED,
    BATCH_DEPLOYMENT_UPDATED,
    BATCH_DEPLOYMENT_DELETED,
    BATCH_DEPLOYMENT_READY,
    BATCH_DEPLOYMENT_FAILED,
    DEPLOYMENT_PROVISIONING,
    DEPLOYMENT_UPDATING,
    DEPLOYMENT_READY,
    DEPLOYMENT_FAILED,
    INSTANCE_READY,
    INSTANCE_DRAINING,
    INSTANCE_STOPPED,
    TRAFFIC_APPLIED,
    TRAFFIC_REJECTED,
    ALERT_FIRED,
    ALERT_RESOLVED,
    *AUTOSCALE_CHANGED.values(),
    AUTOSCALE_SCALED,
    *BATCH_JOB.values(),
    *ASSET_EVENTS.values(),
)
BY_TYPE: dict[str, EventSpec[Any]] = {spec.type: spec for spec in ALL}
