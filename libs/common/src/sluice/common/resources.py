"""The stored shape of endpoints and deployments, shared by every service.

Each document has one writer: the registry writes endpoints, deployments and
the JWKS, the provisioner writes instances; the other services read them
(ARCHITECTURE.md, principle 1: every service rebuilds its view from MongoDB).
Field names follow the protobuf messages in proto/sluice/v1, so converting is
mechanical, but no protobuf type appears here. Enumerations use Azure's
spelling (`key`, `aml_token`, `Succeeded`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

ONLINE_ENDPOINTS = "online_endpoints"
ONLINE_DEPLOYMENTS = "online_deployments"
BATCH_ENDPOINTS = "batch_endpoints"
BATCH_DEPLOYMENTS = "batch_deployments"
# Written by the provisioner only: the instances of each online deployment (`InstancesDoc`).
DEPLOYMENT_INSTANCES = "deployment_instances"
# Written by the provisioner only: the recent decisions of each online deployment's own
# scale_settings (target_utilization, min_instances: 0), `{_id: <deployment id>,
# decisions: [...]}`, most recent first; `sluice monitor autoscale show --resource` lists them.
SCALE_DECISIONS = "scale_decisions"
KEEP_SCALE_DECISIONS = 20
# Written by the traffic controller on every ACK: {_id: "gateway", endpoints: {name: version}}
# (the endpoint versions Envoy serves); the registry shows it as applied_version.
GATEWAY_APPLIED = "gateway_applied"
# Written by the batch service only: its jobs; the registry reads each job's `assets`
# (`model:<name>:<version>`, `environment:...`, `data:...`) for asset lineage.
BATCH_JOBS = "batch_jobs"
# Written by the registry only: the public keys of its tokens, `{_id: JWKS_ID, jwks: <json>}`.
JWKS = "jwks"
JWKS_ID = "current"

DocT = TypeVar("DocT", bound=BaseModel)


class AuthMode(StrEnum):
    key = "key"
    aml_token = "aml_token"  # noqa: S105 - a mode name, not a secret


class ComputeKind(StrEnum):
    managed = "managed"
    kubernetes = "kubernetes"


class ProvisioningState(StrEnum):
    creating = "Creating"
    provisioning = "Provisioning"
    updating = "Updating"
    deleting = "Deleting"
    succeeded = "Succeeded"
    failed = "Failed"
    canceled = "Canceled"


class OutputAction(StrEnum):
    append_row = "append_row"
    summary_only = "summary_only"


def egress_access(value: object) -> str:
    """Azure's `egress_public_network_access`, any case ("Disabled" in ARM's JSON)."""
    if value == "":  # unset in a proto message
        return "enabled"
    if isinstance(value, str) and value.lower() in ("enabled", "disabled"):
        return value.lower()
    raise ValueError(f"egress_public_network_access must be enabled or disabled, got {value!r}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- building blocks ---------------------------------------------------------


class ArtifactRef(_Model):
    """A model or code folder in the artifact store, addressed by content."""

    digest: str  # "sha256:<hex>"
    name: str
    is_directory: bool = False


class ModelRef(_Model):
    """An uploaded artifact, or a registered model reference (`registered`, as written).

    The registry resolves references at create time: what it stores has the
    model version's `artifact` and `asset` = "name:version" (for lineage).
    """

    artifact: ArtifactRef | None = None
    registered: str | None = None
    asset: str = ""


class CodeConfiguration(_Model):
    code: ArtifactRef | None = None
    scoring_script: str = ""


class EnvironmentSpec(_Model):
    conda_file: str = ""  # the conda YAML's content
    image: str = ""
    registered: str = ""
    pip_requirements: tuple[str, ...] = ()


class RequestSettings(_Model):
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


class Probe(_Model):
    initial_delay_s: int = 10
    period_s: int = 10
    timeout_s: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30


class ScaleSettings(_Model):
    type: str = "default"
    min_instances: int = 1
    max_instances: int = 1
    target_utilization_percentage: int = 70
    polling_interval_s: int = 1


class ResourceRequirements(_Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class RetrySettings(_Model):
    max_retries: int = 3
    timeout_s: int = 30


class BatchSettings(_Model):
    max_concurrency_per_instance: int = 1
    mini_batch_size: int = 10
    output_action: OutputAction = OutputAction.append_row
    output_file_name: str = "predictions.csv"
    retry_settings: RetrySettings = RetrySettings()
    error_threshold: int = -1
    logging_level: str = "info"
    environment_variables: dict[str, str] = Field(default_factory=dict)


# Collections the inference server fills itself (Azure's names): run()'s input and output,
# and the raw request and response (payload logging).
COLLECTIONS = ("model_inputs", "model_outputs", "request", "response")
ROLLING_RATES = ("minute", "hour", "day")


class DataCollection(_Model):
    enabled: bool = False


class DataCollector(_Model):
    """Azure's `data_collector`: which payloads of sampled requests are kept (docs/tracing.md).

    No collection enabled = off (the default).
    """

    collections: dict[str, DataCollection] = Field(default_factory=dict)
    sampling_rate: float = 1.0
    rolling_rate: str = "hour"

    @field_validator("collections")
    @classmethod
    def _known(cls, value: dict[str, DataCollection]) -> dict[str, DataCollection]:
        unknown = sorted(set(value) - set(COLLECTIONS))
        if unknown:
            raise ValueError(
                f"collection {unknown[0]!r} is not collected by Sluice: use "
                f"{', '.join(COLLECTIONS)} (custom collections need azureml-ai-monitoring's "
                "Collector, which Sluice does not provide)"
            )
        return value

    @field_validator("sampling_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"sampling_rate must be between 0.0 and 1.0, got {value}")
        return value

    @field_validator("rolling_rate")
    @classmethod
    def _rolling(cls, value: str) -> str:
        if value.lower() not in ROLLING_RATES:
            raise ValueError(f"rolling_rate must be minute, hour or day, got {value!r}")
        return value.lower()

    @property
    def enabled(self) -> list[str]:
        """The names of the enabled collections, in Azure's order."""
        return [c for c in COLLECTIONS if c in self.collections and self.collections[c].enabled]


# ---- specs: what the user asks for ---------------------------------------------


class OnlineEndpointSpec(_Model):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    auth_mode: AuthMode = AuthMode.key
    kind: ComputeKind = ComputeKind.managed
    compute: str = ""
    traffic: dict[str, int] = Field(default_factory=dict)
    mirror_traffic: dict[str, int] = Field(default_factory=dict)


class OnlineDeploymentSpec(_Model):
    name: str
    endpoint_name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    kind: ComputeKind = ComputeKind.managed
    model: ModelRef = ModelRef()
    code_configuration: CodeConfiguration = CodeConfiguration()
    environment: EnvironmentSpec = EnvironmentSpec()
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1
    environment_variables: dict[str, str] = Field(default_factory=dict)
    request_settings: RequestSettings = RequestSettings()
    liveness_probe: Probe = Probe()
    readiness_probe: Probe = Probe()
    scale_settings: ScaleSettings = ScaleSettings()
    resources: ResourceRequirements = ResourceRequirements()
    app_insights_enabled: bool = False
    data_collector: DataCollector = DataCollector()
    # Azure's field: "disabled" keeps the deployment's code off the network (its instances
    # may only serve; local backend: Landlock's TCP rules, Kubernetes: an egress policy).
    egress_public_network_access: str = "enabled"

    _egress = field_validator("egress_public_network_access", mode="before")(egress_access)

    @property
    def egress_disabled(self) -> bool:
        return self.egress_public_network_access == "disabled"


class BatchEndpointSpec(_Model):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    auth_mode: AuthMode = AuthMode.aml_token
    default_deployment: str = ""


class BatchDeploymentSpec(_Model):
    name: str
    endpoint_name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    model: ModelRef = ModelRef()
    code_configuration: CodeConfiguration = CodeConfiguration()
    environment: EnvironmentSpec = EnvironmentSpec()
    compute: str = ""
    instance_count: int = 1
    settings: BatchSettings = BatchSettings()


# ---- stored documents -----------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


# A Succeeded deployment's status message holds one line per substitution the platform made
# (python version, ignored image, replaced environment), each starting with this prefix.
STATUS_WARNING_PREFIX = "warning: "
# A batch deployment's status message while a batch service builds its environment.
ENVIRONMENT_BUILDING = "building its environment"


class Meta(_Model):
    """Bookkeeping of every stored resource. `version` grows with each spec change."""

    version: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    provisioning_state: ProvisioningState = ProvisioningState.creating
    status_message: str = ""

    @property
    def warnings(self) -> list[str]:
        """The substitution warnings in `status_message`."""
        return [
            line.removeprefix(STATUS_WARNING_PREFIX)
            for line in self.status_message.splitlines()
            if line.startswith(STATUS_WARNING_PREFIX)
        ]


class Instance(_Model):
    """One running copy of a deployment; written by the provisioner."""

    id: str
    address: str  # host:port of its inference server
    ready: bool = False
    # Empty: the gateway bridges gRPC to `address` (kept so records and clients of versions
    # whose instances ran their own gRPC server still read).
    grpc_address: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    # > 0 only for the scale-to-zero activator: a request it receives is held while the
    # deployment wakes, up to this many seconds, so the gateway waits that much longer
    # than request_timeout_ms (a cold start is not the model being slow).
    holds_requests_s: float = 0.0


class OnlineEndpointDoc(_Model):
    spec: OnlineEndpointSpec
    meta: Meta
    # Endpoint keys, encrypted with the platform's secret key (sluice.common.secretbox).
    keys: dict[str, str] = Field(default_factory=dict)


class OnlineDeploymentDoc(_Model):
    """Stored in `online_deployments`; written by the registry only."""

    spec: OnlineDeploymentSpec
    meta: Meta


class DeploymentInstancesDoc(_Model):
    """Stored in `deployment_instances` (`_id` as the deployment's); the provisioner writes it."""

    instances: tuple[Instance, ...] = ()


class OnlineDeployment(OnlineDeploymentDoc):
    """What readers see: the registry's document joined with the provisioner's instances."""

    instances: tuple[Instance, ...] = ()


class BatchEndpointDoc(_Model):
    spec: BatchEndpointSpec
    meta: Meta


class BatchDeploymentDoc(_Model):
    spec: BatchDeploymentSpec
    meta: Meta


def deployment_id(endpoint_name: str, name: str) -> str:
    """The `_id` of a deployment document: unique within its endpoint."""
    return f"{endpoint_name}/{name}"


def from_document(model: type[DocT], raw: Mapping[str, Any]) -> DocT:
    """A stored resource from its MongoDB document (the inverse of `to_document`).

    Fields whose name starts with `_` are the writer's bookkeeping (`_id`, the
    registry's case-folded `_key`), not part of the resource.
    """
    return model.model_validate({k: v for k, v in raw.items() if not k.startswith("_")})


def to_document(doc: BaseModel, _id: str) -> dict[str, Any]:
    """The MongoDB document for a stored resource (JSON types only: ISO dates sort as text)."""
    return {"_id": _id, **doc.model_dump(mode="json")}


# Tokens for aml_token endpoints: the registry signs them, the gateway verifies them.
TOKEN_ISSUER = "sluice-registry"  # noqa: S105 - an issuer name, not a secret


def token_audience(endpoint_name: str) -> str:
    """The `aud` of tokens for one endpoint: a token for one endpoint fails on another."""
    return f"sluice-endpoint/{endpoint_name}"
