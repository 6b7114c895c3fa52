"""Resources as `az ml ... show` prints them, for `-o json|yaml|tsv` and `--query`.

Field names and nesting follow Azure ML CLI v2 (snake_case from the SDK's
schema dump; `primaryKey`/`secondaryKey` from get-credentials), so a script
that reads `--query scoring_uri`, `--query traffic` or `--query
provisioning_state` works unchanged. What Azure has no field for (the running
instances, Sluice's resource version and status message) is added under
names Azure does not use: `instances`, and `properties["sluice.*"]`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sluice.common.assets import AssetKind, AssetRef, ReferenceError_, parse_reference
from sluice.common.azure_ids import RESOURCE_GROUP, asset_id, resource_id
from sluice.common.resources import (
    AuthMode,
    BatchDeploymentDoc,
    ComputeKind,
    EnvironmentSpec,
    Meta,
    ModelRef,
    OnlineDeployment,
    Probe,
    ProvisioningState,
    ScaleSettings,
)
from sluice.sdk.client import BatchEndpoint, Credentials, OnlineEndpoint

LOCATION = "local"


def azure_state(state: ProvisioningState) -> str:
    """A provisioning state as Azure names it: Sluice's `Provisioning` (a first version
    starting) is Azure's `Creating`, as REST says too; a script polling for Creating waits."""
    return "Creating" if state is ProvisioningState.provisioning else state.value


def _created(meta: Meta) -> dict[str, Any]:
    return {
        "created_at": meta.created_at.isoformat(),
        "created_by": meta.created_by,
        "last_modified_at": meta.updated_at.isoformat(),
    }


def _sluice(meta: Meta) -> dict[str, str]:
    props = {"sluice.version": str(meta.version)}
    if meta.status_message:
        props["sluice.status_message"] = meta.status_message
    return props


def _probe(probe: Probe) -> dict[str, int]:
    return {
        "initial_delay": probe.initial_delay_s,
        "period": probe.period_s,
        "timeout": probe.timeout_s,
        "success_threshold": probe.success_threshold,
        "failure_threshold": probe.failure_threshold,
    }


def model_id(model: ModelRef) -> str | None:
    """The registered version's id, or an anonymous model id named by the artifact's digest."""
    if model.asset:
        name, _, version = model.asset.rpartition(":")
        return asset_id(AssetKind.model, name, version)
    if model.artifact is not None:
        return asset_id(AssetKind.model, model.artifact.digest.split(":")[-1][:32], "1")
    return None


def environment_id(env: EnvironmentSpec) -> str | None:
    """A registered/curated environment's reference, or Azure's anonymous-environment id."""
    if env.registered:
        try:
            ref: AssetRef = parse_reference(env.registered, AssetKind.environment)
        except ReferenceError_:
            return env.registered
        if ref.registry or not ref.version:
            return str(ref)
        return asset_id(AssetKind.environment, ref.name, ref.version)
    if env.conda_file or env.image or env.pip_requirements:
        text = "\n".join([env.conda_file, env.image, *env.pip_requirements])
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return asset_id(AssetKind.environment, "CliV2AnonymousEnvironment", digest)
    return None


def online_endpoint(endpoint: OnlineEndpoint) -> dict[str, Any]:
    doc, spec = endpoint.doc, endpoint.doc.spec
    rid = resource_id("onlineEndpoints", spec.name)
    out: dict[str, Any] = {
        "auth_mode": spec.auth_mode.value,
        "description": spec.description,
        "id": rid,
        "kind": "K8s" if spec.kind is ComputeKind.kubernetes else "Managed",
        "location": LOCATION,
        "mirror_traffic": dict(spec.mirror_traffic),
        "name": spec.name,
        "openapi_uri": endpoint.swagger_uri,
        "properties": {
            "azureml.onlineendpointid": rid.lower(),
            "createdAt": doc.meta.created_at.isoformat(),
            "createdBy": doc.meta.created_by,
            "lastModifiedAt": doc.meta.updated_at.isoformat(),
            **_sluice(doc.meta),
        },
        "provisioning_state": azure_state(doc.meta.provisioning_state),
        "public_network_access": "enabled",
        "resourceGroup": RESOURCE_GROUP,
        "scoring_uri": endpoint.scoring_uri,
        "tags": dict(spec.tags),
        "traffic": dict(spec.traffic),
    }
    if spec.compute:
        out["compute"] = spec.compute
    return out


def online_endpoint_summary(endpoint: OnlineEndpoint) -> dict[str, Any]:
    """What `az ml online-endpoint list` keeps of each endpoint."""
    full = online_endpoint(endpoint)
    keys = ("name", "location", "traffic", "mirror_traffic", "provisioning_state", "kind", "tags")
    return {k: full[k] for k in keys}


def online_deployment(doc: OnlineDeployment) -> dict[str, Any]:
    spec = doc.spec
    code = spec.code_configuration
    rs = spec.request_settings
    out: dict[str, Any] = {
        "app_insights_enabled": spec.app_insights_enabled,
        "code_configuration": {
            "code": code.code.digest if code.code else None,
            "scoring_script": code.scoring_script or None,
        },
        "creation_context": _created(doc.meta),
        "description": spec.description,
        "egress_public_network_access": spec.egress_public_network_access,
        "endpoint_name": spec.endpoint_name,
        "environment": environment_id(spec.environment),
        "environment_variables": dict(spec.environment_variables),
        "id": resource_id("onlineEndpoints", spec.endpoint_name, "deployments", spec.name),
        "instance_count": spec.instance_count,
        "instance_type": spec.instance_type,
        "instances": [i.model_dump(mode="json") for i in doc.instances],
        "liveness_probe": _probe(spec.liveness_probe),
        "model": model_id(spec.model),
        "name": spec.name,
        "properties": _sluice(doc.meta),
        "provisioning_state": azure_state(doc.meta.provisioning_state),
        "readiness_probe": _probe(spec.readiness_probe),
        "request_settings": {
            "max_concurrent_requests_per_instance": rs.max_concurrent_requests_per_instance,
            "max_queue_wait_ms": rs.max_queue_wait_ms,
            "request_timeout_ms": rs.request_timeout_ms,
        },
        "resourceGroup": RESOURCE_GROUP,
        "scale_settings": _scale_settings(spec.scale_settings),
        "tags": dict(spec.tags),
        "type": spec.kind.value,
    }
    if spec.data_collector.collections:  # Azure shows it only when set
        dc = spec.data_collector
        out["data_collector"] = {
            "collections": {k: {"enabled": str(c.enabled)} for k, c in dc.collections.items()},
            "rolling_rate": dc.rolling_rate,
            "sampling_rate": dc.sampling_rate,
        }
    return out


def online_deployment_summary(doc: OnlineDeployment) -> dict[str, Any]:
    full = online_deployment(doc)
    keys = ("name", "endpoint_name", "provisioning_state", "instance_type", "model", "type")
    return {k: full[k] for k in keys}


def batch_endpoint(endpoint: BatchEndpoint) -> dict[str, Any]:
    doc, spec = endpoint.doc, endpoint.doc.spec
    return {
        "auth_mode": "key" if spec.auth_mode is AuthMode.key else "aad_token",
        "defaults": {"deployment_name": spec.default_deployment or None},
        "description": spec.description,
        "id": resource_id("batchEndpoints", spec.name),
        "location": LOCATION,
        "name": spec.name,
        "properties": _sluice(doc.meta),
        "provisioning_state": azure_state(doc.meta.provisioning_state),
        "resourceGroup": RESOURCE_GROUP,
        "scoring_uri": endpoint.scoring_uri,
        "tags": dict(spec.tags),
    }


def batch_deployment(doc: BatchDeploymentDoc) -> dict[str, Any]:
    """Azure prints batch deployments flat (the legacy shape), whatever the YAML's form."""
    spec, s = doc.spec, doc.spec.settings
    out: dict[str, Any] = {
        "code_configuration": {
            "code": spec.code_configuration.code.digest if spec.code_configuration.code else None,
            "scoring_script": spec.code_configuration.scoring_script or None,
        },
        "compute": spec.compute or None,
        "creation_context": _created(doc.meta),
        "description": spec.description,
        "endpoint_name": spec.endpoint_name,
        "environment": environment_id(spec.environment),
        "environment_variables": dict(s.environment_variables),
        "error_threshold": s.error_threshold,
        "id": resource_id("batchEndpoints", spec.endpoint_name, "deployments", spec.name),
        "logging_level": s.logging_level,
        "max_concurrency_per_instance": s.max_concurrency_per_instance,
        "mini_batch_size": s.mini_batch_size,
        "model": model_id(spec.model),
        "name": spec.name,
        "output_action": s.output_action.value,
        "properties": _sluice(doc.meta),
        "provisioning_state": azure_state(doc.meta.provisioning_state),
        "resourceGroup": RESOURCE_GROUP,
        "resources": {"instance_count": spec.instance_count},
        "retry_settings": {
            "max_retries": s.retry_settings.max_retries,
            "timeout": s.retry_settings.timeout_s,
        },
        "tags": dict(spec.tags),
    }
    if s.output_action.value == "append_row":
        out["output_file_name"] = s.output_file_name
    return out


def _scale_settings(s: ScaleSettings) -> dict[str, Any]:
    """As Azure shows them: `{"type": "default"}`, or the target_utilization fields."""
    if s.type == "default":
        return {"type": "default"}
    return {
        "type": s.type,
        "min_instances": s.min_instances,
        "max_instances": s.max_instances,
        "target_utilization_percentage": s.target_utilization_percentage,
        "polling_interval": s.polling_interval_s,
    }


def credentials(creds: Credentials) -> dict[str, Any]:
    """`get-credentials`: Azure's camelCase keys; a token's times as Azure's numbers
    (seconds since the epoch, as the workspace REST API gives them)."""
    if creds.auth_mode is AuthMode.key:
        return {"primaryKey": creds.primary_key, "secondaryKey": creds.secondary_key}

    def epoch(at: datetime | None) -> int | None:
        return int(at.timestamp()) if at is not None else None

    return {
        "accessToken": creds.access_token,
        "tokenType": "Bearer",
        "expiryTimeUtc": epoch(creds.expiry_time),
        "refreshAfterTimeUtc": epoch(creds.refresh_after_time),
    }
