"""Stored resources <-> Azure Resource Manager's shape (proto/sluice/v1/workspace.proto).

The REST API speaks Azure ML's JSON: `{id, name, type, tags, sku?, properties: {...},
systemData}` with Azure's property names and enum spellings, ISO 8601 durations
("PT10S") and model/environment references as strings. These functions are the whole
mapping; the use cases stay in RegistryService. Converting back (`*_spec`) builds the
spec from what the body names, so a PUT replaces the resource: what it leaves out takes
the default, as a PUT of the YAML without that key would. A GET's answer PUT back
unchanged changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from sluice.common.access import status_for_caller
from sluice.common.artifacts import (
    ARTIFACT_URI_PREFIX,
    ArtifactError,
    artifact_uri,
    parse_artifact_uri,
)
from sluice.common.azure_ids import resource_id
from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    BatchEndpointDoc,
    BatchEndpointSpec,
    ComputeKind,
    EnvironmentSpec,
    Meta,
    ModelRef,
    OnlineDeployment,
    OnlineDeploymentSpec,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
    OutputAction,
    Probe,
    ProvisioningState,
)
from sluice.registry.domain import InvalidArgument
from sluice.v1 import registry_pb2
from sluice.v1 import workspace_pb2 as ws

LOCATION = "local"
PROVIDER = "Microsoft.MachineLearningServices/workspaces"
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")

Auth = ws.EndpointAuthMode
EndpointState = ws.EndpointProvisioningState
DeploymentState = ws.DeploymentProvisioningState
Compute = ws.EndpointComputeType
Output = ws.BatchOutputAction


# ---- small pieces -----------------------------------------------------------------------


def etag(meta: Meta) -> str:
    return str(meta.version)


def parse_etag(header: str) -> int | None:
    """If-Match's value (`"3"`, `W/"3"`, `3`) as the version it names; None for `*`."""
    text = header.strip().removeprefix("W/").strip('"')
    if text == "*":
        return None
    if not text.isdigit():
        raise InvalidArgument(f'If-Match {header!r} is not an ETag of this API (e.g. "3")')
    return int(text)


def duration(seconds: float) -> str:
    """Seconds as ISO 8601 ("PT10S", "PT0.5S"), as Azure writes durations."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"PT{text}S"


def parse_duration(text: str, field: str) -> float:
    match = _DURATION.match(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT"):
        raise InvalidArgument(f"{field} {text!r} is not an ISO 8601 duration (e.g. PT10S, PT1M)")
    days, hours, minutes, seconds = match.groups()
    return (
        int(days or 0) * 86400
        + int(hours or 0) * 3600
        + int(minutes or 0) * 60
        + float(seconds or 0)
    )


def system_data(meta: Meta) -> ws.SystemData:
    out = ws.SystemData(
        created_by=meta.created_by,
        created_by_type="User",
        last_modified_by=meta.created_by,
        last_modified_by_type="User",
    )
    out.created_at.FromDatetime(meta.created_at)
    out.last_modified_at.FromDatetime(meta.updated_at)
    return out


def _endpoint_state(state: ProvisioningState) -> ws.EndpointProvisioningState.Value.ValueType:
    if state is ProvisioningState.provisioning:
        return EndpointState.Creating
    return EndpointState.Value.Value(state.value)


def _deployment_state(
    state: ProvisioningState,
) -> ws.DeploymentProvisioningState.Value.ValueType:
    if state is ProvisioningState.provisioning:
        return DeploymentState.Creating
    return DeploymentState.Value.Value(state.value)


def _auth_out(mode: AuthMode) -> ws.EndpointAuthMode.Value.ValueType:
    return Auth.Key if mode is AuthMode.key else Auth.AMLToken


def _auth_in(value: int, default: AuthMode) -> AuthMode:
    if value == Auth.AUTH_MODE_UNSET:
        return default
    return AuthMode.key if value == Auth.Key else AuthMode.aml_token


def parse_artifact(uri: str, field: str) -> ArtifactRef:
    """The artifact a body field names (`azureml://artifacts/...`), InvalidArgument naming
    the field if malformed."""
    try:
        return parse_artifact_uri(uri)
    except ArtifactError as exc:
        raise InvalidArgument(f"{field} {exc}") from None


def _model_out(model: ModelRef) -> str:
    if model.asset:
        return f"azureml:{model.asset}"
    if model.registered:
        return model.registered
    return artifact_uri(model.artifact) if model.artifact else ""


def _model_in(text: str) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith(ARTIFACT_URI_PREFIX):
        return {"artifact": parse_artifact(text, "model")}
    return {"registered": text}


def _environment_out(env: EnvironmentSpec) -> tuple[str, ws.ArmEnvironment | None]:
    if env.registered:
        ref = env.registered
        return (ref if ref.startswith("azureml:") else f"azureml:{ref}"), None
    if env.conda_file or env.image or env.pip_requirements:
        inline = ws.ArmEnvironment(
            image=env.image, conda_file=env.conda_file, pip_requirements=env.pip_requirements
        )
        return "", inline
    return "", None


def _environment_in(environment_id: str, inline: ws.ArmEnvironment) -> dict[str, Any]:
    if environment_id:
        return {"registered": environment_id}
    return {
        "image": inline.image,
        "conda_file": inline.conda_file,
        "pip_requirements": tuple(inline.pip_requirements),
    }


def _code_out(spec: OnlineDeploymentSpec | BatchDeploymentSpec) -> ws.ArmCodeConfiguration:
    code = spec.code_configuration
    return ws.ArmCodeConfiguration(
        code_id=artifact_uri(code.code) if code.code else "", scoring_script=code.scoring_script
    )


def _code_in(code: ws.ArmCodeConfiguration) -> dict[str, Any]:
    out: dict[str, Any] = {"scoring_script": code.scoring_script}
    if code.code_id:
        out["code"] = parse_artifact(code.code_id, "codeConfiguration.codeId")
    return out


Spec = TypeVar("Spec", bound=BaseModel)


def build_spec(model: type[Spec], data: dict[str, Any], what: str) -> Spec:
    """The spec from the body's values; pydantic's complaint, in Azure's terms, if invalid."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"{what}: {where}: {first['msg']}") from exc


def _check_name(path_name: str, body_name: str, what: str) -> None:
    if body_name and body_name != path_name:
        raise InvalidArgument(
            f"the body names {what} {body_name!r} but the path {path_name!r}; they must match"
        )


def patch_tags(tags: struct_pb2.Struct) -> dict[str, str]:
    """A PATCH's tags, present in its body: they replace the whole set, as an
    ARM PATCH of tags does: `{}` clears every tag, a null value leaves that one out."""
    out: dict[str, str] = {}
    for key, value in tags.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[key] = value.string_value
        elif kind != "null_value":
            raise InvalidArgument(f"tags.{key} must be a string (or null to remove it)")
    return out


def _shares_out(shares: Mapping[str, int]) -> struct_pb2.Struct:
    """A traffic split as its Struct, always set (`{}` when empty), so a GET's answer PUT
    back names the same split."""
    out = struct_pb2.Struct()
    out.update(shares)
    return out


def _shares_in(props: Message, field: str, json_name: str) -> dict[str, int] | None:
    """A PUT's traffic (or mirror traffic) split, None when the body does not name it:
    `{}` names an empty split (no traffic anywhere), which a proto3 map could not tell
    from an absent one. Shares are whole percents."""
    if not props.HasField(field):
        return None
    shares: dict[str, int] = {}
    for name, value in getattr(props, field).fields.items():
        kind = value.WhichOneof("kind")
        number = value.number_value if kind == "number_value" else None
        if kind == "string_value" and value.string_value.strip().isdigit():
            number = float(value.string_value)  # proto JSON's quoted integers, as the map took
        if number is None or not number.is_integer():
            raise InvalidArgument(
                f"{json_name}.{name} must be a whole percent (0 to 100), got "
                f"{json_format.MessageToJson(value, indent=None)}"
            )
        shares[name] = int(number)
    return shares


def _set(message: Message, field: str) -> bool:
    return message.HasField(field)


# ---- online endpoints -------------------------------------------------------------------


def online_endpoint(
    doc: OnlineEndpointDoc, scoring_base: str, applied_version: int = 0
) -> ws.OnlineEndpointTrackedResource:
    spec = doc.spec
    base = scoring_base.format(name=spec.name)
    return ws.OnlineEndpointTrackedResource(
        id=resource_id("onlineEndpoints", spec.name),
        name=spec.name,
        type=f"{PROVIDER}/onlineEndpoints",
        location=LOCATION,
        tags=spec.tags,
        kind="Kubernetes" if spec.kind is ComputeKind.kubernetes else "Managed",
        properties=ws.OnlineEndpointProperties(
            auth_mode=_auth_out(spec.auth_mode),
            description=spec.description,
            compute=spec.compute,
            traffic=_shares_out(spec.traffic),
            mirror_traffic=_shares_out(spec.mirror_traffic),
            provisioning_state=_endpoint_state(doc.meta.provisioning_state),
            scoring_uri=f"{base}/score",
            swagger_uri=f"{base}/swagger.json",
            public_network_access="Enabled",
            applied_etag=str(applied_version) if applied_version else "",
        ),
        system_data=system_data(doc.meta),
        etag=etag(doc.meta),
    )


def online_endpoint_spec(
    name: str, resource: ws.OnlineEndpointTrackedResource
) -> tuple[OnlineEndpointSpec, dict[str, int] | None, dict[str, int] | None]:
    """The spec a PUT asks for, and its traffic and mirror traffic (None: not named)."""
    _check_name(name, resource.name, "endpoint")
    props = resource.properties
    kind = resource.kind.lower()
    if kind not in ("", "managed", "kubernetes"):
        raise InvalidArgument(f"kind {resource.kind!r} is not Managed or Kubernetes")
    traffic = _shares_in(props, "traffic", "traffic")
    mirror = _shares_in(props, "mirror_traffic", "mirrorTraffic")
    spec = build_spec(
        OnlineEndpointSpec,
        {
            "name": name,
            "description": props.description,
            "tags": dict(resource.tags),
            "auth_mode": _auth_in(props.auth_mode, AuthMode.key),
            "kind": ComputeKind.kubernetes if kind == "kubernetes" else ComputeKind.managed,
            "compute": props.compute,
            "traffic": traffic or {},
            "mirror_traffic": mirror or {},
        },
        f"online endpoint {name!r}",
    )
    return spec, traffic, mirror


# ---- online deployments -----------------------------------------------------------------


def _probe_out(probe: Probe) -> ws.ProbeSettings:
    return ws.ProbeSettings(
        initial_delay=duration(probe.initial_delay_s),
        period=duration(probe.period_s),
        timeout=duration(probe.timeout_s),
        success_threshold=probe.success_threshold,
        failure_threshold=probe.failure_threshold,
    )


def _probe_in(probe: ws.ProbeSettings, field: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("initial_delay", "period", "timeout"):
        text = getattr(probe, name)
        if text:
            out[f"{name}_s"] = int(parse_duration(text, f"{field}.{name}"))
    for name in ("success_threshold", "failure_threshold"):
        if getattr(probe, name):
            out[name] = getattr(probe, name)
    return out


def _resources_out(requirements: Mapping[str, str]) -> ws.ContainerResourceSettings:
    return ws.ContainerResourceSettings(
        cpu=requirements.get("cpu", ""),
        memory=requirements.get("memory", ""),
        gpu=requirements.get("nvidia.com/gpu", ""),
    )


def _resources_in(settings: ws.ContainerResourceSettings) -> dict[str, str]:
    pairs = {"cpu": settings.cpu, "memory": settings.memory, "nvidia.com/gpu": settings.gpu}
    return {k: v for k, v in pairs.items() if v}


def online_deployment(doc: OnlineDeployment) -> ws.OnlineDeploymentTrackedResource:
    spec = doc.spec
    env_id, inline = _environment_out(spec.environment)
    scale = spec.scale_settings
    collector = spec.data_collector
    props = ws.OnlineDeploymentProperties(
        description=spec.description,
        model=_model_out(spec.model),
        code_configuration=_code_out(spec),
        environment_id=env_id,
        environment=inline,
        environment_variables=spec.environment_variables,
        endpoint_compute_type=(
            Compute.Kubernetes if spec.kind is ComputeKind.kubernetes else Compute.Managed
        ),
        instance_type=spec.instance_type,
        liveness_probe=_probe_out(spec.liveness_probe),
        readiness_probe=_probe_out(spec.readiness_probe),
        request_settings=ws.OnlineRequestSettings(
            max_concurrent_requests_per_instance=(
                spec.request_settings.max_concurrent_requests_per_instance
            ),
            request_timeout=duration(spec.request_settings.request_timeout_ms / 1000),
            max_queue_wait=duration(spec.request_settings.max_queue_wait_ms / 1000),
        ),
        scale_settings=ws.OnlineScaleSettings(
            scale_type="TargetUtilization" if scale.type == "target_utilization" else "Default",
            min_instances=scale.min_instances,
            max_instances=scale.max_instances,
            target_utilization_percentage=scale.target_utilization_percentage,
            polling_interval=duration(scale.polling_interval_s),
        ),
        app_insights_enabled=spec.app_insights_enabled,
        data_collector=ws.ArmDataCollector(
            collections={
                name: ws.ArmDataCollection(
                    data_collection_mode="Enabled" if c.enabled else "Disabled",
                    sampling_rate=collector.sampling_rate,
                )
                for name, c in collector.collections.items()
            },
            rolling_rate=collector.rolling_rate.capitalize(),
        ),
        egress_public_network_access=spec.egress_public_network_access.capitalize(),
        provisioning_state=_deployment_state(doc.meta.provisioning_state),
        status_message=status_for_caller(doc.meta.status_message),
        instances=[
            registry_pb2.Instance(
                id=i.id, address=i.address, ready=i.ready, grpc_address=i.grpc_address
            )
            for i in doc.instances
        ],
    )
    for out, instance in zip(props.instances, doc.instances, strict=True):
        out.started_at.FromDatetime(instance.started_at)
    if spec.resources.requests or spec.resources.limits:
        props.container_resource_requirements.CopyFrom(
            ws.ContainerResourceRequirements(
                container_resource_requests=_resources_out(spec.resources.requests),
                container_resource_limits=_resources_out(spec.resources.limits),
            )
        )
    return ws.OnlineDeploymentTrackedResource(
        id=resource_id("onlineEndpoints", spec.endpoint_name, "deployments", spec.name),
        name=spec.name,
        type=f"{PROVIDER}/onlineEndpoints/deployments",
        location=LOCATION,
        tags=spec.tags,
        kind="Kubernetes" if spec.kind is ComputeKind.kubernetes else "Managed",
        sku=ws.Sku(name="Default", capacity=spec.instance_count),
        properties=props,
        system_data=system_data(doc.meta),
        etag=etag(doc.meta),
    )


def _data_collector_in(collector: ws.ArmDataCollector) -> dict[str, Any]:
    if not collector.collections:
        return {}
    rates = {c.sampling_rate for c in collector.collections.values() if c.sampling_rate}
    if len(rates) > 1:
        raise InvalidArgument(
            "dataCollector: every collection must have the same samplingRate (Sluice samples "
            "requests once for all collections)"
        )
    modes = {c.data_collection_mode.lower() for c in collector.collections.values()}
    if not modes <= {"enabled", "disabled", ""}:
        raise InvalidArgument("dataCollector: dataCollectionMode must be Enabled or Disabled")
    out: dict[str, Any] = {
        "collections": {
            name: {"enabled": c.data_collection_mode.lower() == "enabled"}
            for name, c in collector.collections.items()
        }
    }
    if rates:
        out["sampling_rate"] = rates.pop()
    if collector.rolling_rate:
        out["rolling_rate"] = collector.rolling_rate
    return out


def online_deployment_spec(
    endpoint: str, name: str, resource: ws.OnlineDeploymentTrackedResource
) -> OnlineDeploymentSpec:
    _check_name(name, resource.name, "deployment")
    props = resource.properties
    data: dict[str, Any] = {
        "name": name,
        "endpoint_name": endpoint,
        "description": props.description,
        "tags": dict(resource.tags),
        "kind": (
            ComputeKind.kubernetes
            if props.endpoint_compute_type == Compute.Kubernetes
            else ComputeKind.managed
        ),
        "model": _model_in(props.model),
        "code_configuration": _code_in(props.code_configuration),
        "environment": _environment_in(props.environment_id, props.environment),
        "environment_variables": dict(props.environment_variables),
        "app_insights_enabled": props.app_insights_enabled,
        "egress_public_network_access": props.egress_public_network_access,
        "liveness_probe": _probe_in(props.liveness_probe, "livenessProbe"),
        "readiness_probe": _probe_in(props.readiness_probe, "readinessProbe"),
        "data_collector": _data_collector_in(props.data_collector),
    }
    if props.instance_type:
        data["instance_type"] = props.instance_type
    if _set(resource, "sku") and resource.sku.capacity:
        data["instance_count"] = resource.sku.capacity
    req = props.request_settings
    request: dict[str, Any] = {}
    if req.max_concurrent_requests_per_instance:
        request["max_concurrent_requests_per_instance"] = req.max_concurrent_requests_per_instance
    if req.request_timeout:
        seconds = parse_duration(req.request_timeout, "requestSettings.requestTimeout")
        request["request_timeout_ms"] = round(seconds * 1000)
    if req.max_queue_wait:
        seconds = parse_duration(req.max_queue_wait, "requestSettings.maxQueueWait")
        request["max_queue_wait_ms"] = round(seconds * 1000)
    data["request_settings"] = request
    scale = props.scale_settings
    scaling: dict[str, Any] = {}
    if scale.scale_type:
        kinds = {"default": "default", "targetutilization": "target_utilization"}
        if scale.scale_type.lower() not in kinds:
            raise InvalidArgument(
                f"scaleSettings.scaleType {scale.scale_type!r} is not Default or TargetUtilization"
            )
        scaling["type"] = kinds[scale.scale_type.lower()]
    if scale.HasField("min_instances"):
        scaling["min_instances"] = scale.min_instances
    if scale.max_instances:
        scaling["max_instances"] = scale.max_instances
    if scale.target_utilization_percentage:
        scaling["target_utilization_percentage"] = scale.target_utilization_percentage
    if scale.polling_interval:
        seconds = parse_duration(scale.polling_interval, "scaleSettings.pollingInterval")
        scaling["polling_interval_s"] = int(seconds)
    data["scale_settings"] = scaling
    if _set(props, "container_resource_requirements"):
        limits = props.container_resource_requirements
        data["resources"] = {
            "requests": _resources_in(limits.container_resource_requests),
            "limits": _resources_in(limits.container_resource_limits),
        }
    return build_spec(OnlineDeploymentSpec, data, f"deployment {endpoint}/{name}")


# ---- batch --------------------------------------------------------------------------------


def batch_endpoint(doc: BatchEndpointDoc, scoring_base: str) -> ws.BatchEndpointTrackedResource:
    spec = doc.spec
    return ws.BatchEndpointTrackedResource(
        id=resource_id("batchEndpoints", spec.name),
        name=spec.name,
        type=f"{PROVIDER}/batchEndpoints",
        location=LOCATION,
        tags=spec.tags,
        properties=ws.BatchEndpointProperties(
            auth_mode=_auth_out(spec.auth_mode),
            description=spec.description,
            defaults=ws.BatchEndpointDefaults(deployment_name=spec.default_deployment),
            provisioning_state=_endpoint_state(doc.meta.provisioning_state),
            scoring_uri=scoring_base.format(name=spec.name) + "/jobs",
        ),
        system_data=system_data(doc.meta),
        etag=etag(doc.meta),
    )


def batch_endpoint_spec(name: str, resource: ws.BatchEndpointTrackedResource) -> BatchEndpointSpec:
    _check_name(name, resource.name, "batch endpoint")
    props = resource.properties
    return build_spec(
        BatchEndpointSpec,
        {
            "name": name,
            "description": props.description,
            "tags": dict(resource.tags),
            "auth_mode": _auth_in(props.auth_mode, AuthMode.aml_token),
            "default_deployment": props.defaults.deployment_name,
        },
        f"batch endpoint {name!r}",
    )


def batch_deployment(doc: BatchDeploymentDoc) -> ws.BatchDeploymentTrackedResource:
    spec = doc.spec
    settings = spec.settings
    env_id, inline = _environment_out(spec.environment)
    return ws.BatchDeploymentTrackedResource(
        id=resource_id("batchEndpoints", spec.endpoint_name, "deployments", spec.name),
        name=spec.name,
        type=f"{PROVIDER}/batchEndpoints/deployments",
        location=LOCATION,
        tags=spec.tags,
        properties=ws.BatchDeploymentProperties(
            description=spec.description,
            model=ws.AssetReference(reference_type="Id", asset_id=_model_out(spec.model)),
            code_configuration=_code_out(spec),
            environment_id=env_id,
            environment=inline,
            environment_variables=settings.environment_variables,
            compute=spec.compute,
            resources=ws.DeploymentResourceConfiguration(instance_count=spec.instance_count),
            max_concurrency_per_instance=settings.max_concurrency_per_instance,
            mini_batch_size=settings.mini_batch_size,
            output_action=(
                Output.SummaryOnly
                if settings.output_action is OutputAction.summary_only
                else Output.AppendRow
            ),
            output_file_name=settings.output_file_name,
            retry_settings=ws.BatchRetrySettings(
                max_retries=settings.retry_settings.max_retries,
                timeout=duration(settings.retry_settings.timeout_s),
            ),
            error_threshold=settings.error_threshold,
            logging_level=settings.logging_level.capitalize(),
            provisioning_state=_deployment_state(doc.meta.provisioning_state),
            status_message=status_for_caller(doc.meta.status_message),
        ),
        system_data=system_data(doc.meta),
        etag=etag(doc.meta),
    )


def batch_deployment_spec(
    endpoint: str, name: str, resource: ws.BatchDeploymentTrackedResource
) -> BatchDeploymentSpec:
    _check_name(name, resource.name, "batch deployment")
    props = resource.properties
    settings: dict[str, Any] = {"environment_variables": dict(props.environment_variables)}
    if props.max_concurrency_per_instance:
        settings["max_concurrency_per_instance"] = props.max_concurrency_per_instance
    if props.mini_batch_size:
        settings["mini_batch_size"] = props.mini_batch_size
    if props.output_action != Output.OUTPUT_ACTION_UNSET:
        settings["output_action"] = (
            OutputAction.summary_only
            if props.output_action == Output.SummaryOnly
            else OutputAction.append_row
        )
    if props.output_file_name:
        settings["output_file_name"] = props.output_file_name
    if props.HasField("error_threshold"):
        settings["error_threshold"] = props.error_threshold
    if props.logging_level:
        settings["logging_level"] = props.logging_level.lower()
    retry: dict[str, Any] = {}
    if props.retry_settings.HasField("max_retries"):
        retry["max_retries"] = props.retry_settings.max_retries
    if props.retry_settings.timeout:
        seconds = parse_duration(props.retry_settings.timeout, "retrySettings.timeout")
        retry["timeout_s"] = int(seconds)
    settings["retry_settings"] = retry
    data: dict[str, Any] = {
        "name": name,
        "endpoint_name": endpoint,
        "description": props.description,
        "tags": dict(resource.tags),
        "model": _model_in(props.model.asset_id),
        "code_configuration": _code_in(props.code_configuration),
        "environment": _environment_in(props.environment_id, props.environment),
        "compute": props.compute,
        "settings": settings,
    }
    if props.resources.instance_count:
        data["instance_count"] = props.resources.instance_count
    return build_spec(BatchDeploymentSpec, data, f"batch deployment {endpoint}/{name}")
