"""Azure ML CLI v2 YAML files -> Sluice resource specs.

The models below accept the YAML schemas of managed and kubernetes online
endpoints/deployments and batch endpoints/deployments (both the newer
`settings:` block and the older top-level batch keys), with `$schema`.
Fields that only make sense on Azure are accepted and reported as warnings;
unknown fields are errors. Relative paths resolve against the YAML's folder.
`--set a.b=value` overrides apply to the YAML before validation, as in Azure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sluice.common.artifacts import ARTIFACT_URI_PREFIX, ArtifactError, parse_artifact_uri
from sluice.common.assets import AssetKind, AssetSpec
from sluice.common.collected import COLLECTOR_PATH, DATASTORE, DEFAULT_DATASTORE
from sluice.common.mlflow_env import mlflow_environment
from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    BatchDeploymentSpec,
    BatchEndpointSpec,
    BatchSettings,
    CodeConfiguration,
    ComputeKind,
    DataCollection,
    DataCollector,
    EnvironmentSpec,
    ModelRef,
    OnlineDeploymentSpec,
    OnlineEndpointSpec,
    OutputAction,
    Probe,
    RequestSettings,
    ResourceRequirements,
    RetrySettings,
    ScaleSettings,
    egress_access,
)
from sluice.sdk import generic_update
from sluice.sdk.generic_update import Edit, GenericUpdateError

Uploader = Callable[[Path], ArtifactRef]
# Registers a deployment's inline named model; returns the `name:version` to reference.
ModelRegistrar = Callable[[AssetSpec], str]
S = TypeVar("S")

# Fields that name Azure resources or features with no local meaning.
AZURE_ONLY = frozenset(
    {
        "identity",
        "public_network_access",
        "private_network_connection",
        "model_mount_path",
        "with_package",
        "properties",
        "location",
    }
)


# Why the Azure-only fields a script may read back with `show` are not what it set.
AZURE_ONLY_WHY = {
    "identity": " (no managed identities: deployments run as the platform's own users)",
    "public_network_access": (
        " (not enforced: the gateway serves every endpoint to whoever reaches it, so `show` "
        "keeps public_network_access: enabled)"
    ),
}


class SpecError(ValueError):
    """A YAML file Sluice cannot use; the message names the file and the field."""


def _lower_mode(value: object) -> object:
    """Azure reads `auth_mode` without regard to case (its Kubernetes sample writes `Key`)."""
    return value.lower() if isinstance(value, str) else value


def _scalars_as_text(value: object) -> object:
    """`tags: {device_batching: 16}`: az stores a tag's number or boolean as its text.
    Anything else (a list, a mapping) is left for validation to refuse."""
    if not isinstance(value, Mapping):
        return value
    return {k: str(v) if isinstance(v, bool | int | float) else v for k, v in value.items()}


class _Azure(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str | None = Field(default=None, alias="$schema")


def _strip_azureml(ref: str) -> str:
    """`azureml:my-model:1` -> `my-model:1` (and `azureml://...` asset ids kept as given)."""
    return ref.removeprefix("azureml:") if not ref.startswith("azureml://") else ref


# ---- online endpoint ----------------------------------------------------------------------


class AzureOnlineEndpoint(_Azure):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    _tags_as_text = field_validator("tags", mode="before")(_scalars_as_text)
    auth_mode: Literal["key", "aml_token", "aad_token"] = "key"
    traffic: dict[str, int] | None = None
    mirror_traffic: dict[str, int] | None = None
    compute: str | None = None
    kind: str | None = None

    _auth_mode_case = field_validator("auth_mode", mode="before")(_lower_mode)

    def to_spec(self) -> OnlineEndpointSpec:
        kubernetes = bool(self.compute) or "kubernetes" in (self.schema_ or "").lower()
        return OnlineEndpointSpec(
            name=self.name,
            description=self.description,
            tags=self.tags,
            # aad_token is accepted for compatibility and treated as aml_token (SPEC.md).
            auth_mode=AuthMode.key if self.auth_mode == "key" else AuthMode.aml_token,
            kind=ComputeKind.kubernetes if kubernetes else ComputeKind.managed,
            compute=_strip_azureml(self.compute or ""),
            traffic=self.traffic or {},
            mirror_traffic=self.mirror_traffic or {},
        )


# ---- shared deployment parts ---------------------------------------------------------------


class AzureModel(_Azure):
    path: str | None = None
    name: str | None = None
    version: str | int | None = None
    type: str | None = None
    description: str | None = None


class AzureCode(_Azure):
    code: str
    scoring_script: str


class AzureBuild(_Azure):
    """A Docker build context (`environment.build`, or an environment asset's `build:`)."""

    path: str
    dockerfile_path: str = "Dockerfile"


class AzureEnvironment(_Azure):
    conda_file: str | None = None
    image: str | None = None
    name: str | None = None
    version: str | int | None = None
    description: str | None = None
    build: AzureBuild | None = None
    inference_config: dict[str, Any] | None = None
    os_type: str | None = None


def resolve_path(base: Path, value: str, field: str) -> Path:
    """`value` relative to the YAML's folder `base`; it must exist.

    What gets uploaded is either named by the YAML or lies in its folder: a relative path
    that a symbolic link takes out of the folder (`model: ./model`, with `model` a link to
    `~/.aws`) is refused, as `pack` refuses links inside an uploaded folder. A path the
    YAML writes out (`../data/model`, `/data/model`) is followed as written.
    """
    root = base.resolve()
    written = Path(os.path.normpath(root / value))  # `..` taken as written, links kept
    path = written.resolve()
    if not path.exists():
        raise SpecError(f"{field}: {value!r} does not exist (looked for {path})")
    inside = not Path(value).is_absolute() and written.is_relative_to(root)
    if inside and not path.is_relative_to(root):  # a link in the folder leads out of it
        raise SpecError(
            f"{field}: {value!r} is a symbolic link to {path}, outside the YAML's folder "
            f"{root}; write that path in the YAML if it is what you mean to upload"
        )
    return path


def code_folder(base: Path, code: AzureCode) -> Path:
    """The code folder, checked to hold the scoring script (a Python file: Sluice's
    inference server imports it; an R or shell entry point belongs to a custom container,
    which Sluice does not run)."""
    folder = resolve_path(base, code.code, "code_configuration.code")
    if not code.scoring_script.endswith(".py"):
        raise SpecError(
            f"code_configuration.scoring_script: {code.scoring_script!r} is not a Python file: "
            "Sluice's inference server imports the scoring script (custom containers with "
            "their own server, such as R plumber, are not run)"
        )
    if not (folder / code.scoring_script).is_file():
        raise SpecError(
            f"code_configuration.scoring_script: {code.scoring_script!r} is not a file in {folder}"
        )
    return folder


def _uploaded(uri: str, field: str) -> ArtifactRef:
    """A file or folder uploaded before, by the URI `model show` and REST print."""
    try:
        return parse_artifact_uri(uri)
    except ArtifactError as exc:
        raise SpecError(f"{field}: {exc}") from None


class _Resolver:
    """Resolves relative paths against the YAML's folder and uploads artifacts."""

    def __init__(self, base: Path, upload: Uploader, register: ModelRegistrar | None = None):
        self.base = base
        self._upload = upload
        self._register = register
        self.warnings: list[str] = []  # what an inline build context does not honour

    def path(self, value: str, field: str) -> Path:
        return resolve_path(self.base, value, field)

    def model(self, model: str | AzureModel | None) -> ModelRef:
        if model is None:
            return ModelRef()
        if isinstance(model, str):
            if model.startswith(ARTIFACT_URI_PREFIX):
                return ModelRef(artifact=_uploaded(model, "model"))
            if model.startswith("azureml:"):
                return ModelRef(registered=_strip_azureml(model))
            return ModelRef(artifact=self._upload(self.path(model, "model")))
        if model.path:
            if model.path.startswith(ARTIFACT_URI_PREFIX):
                artifact = _uploaded(model.path, "model.path")
            else:
                artifact = self._upload(self.path(model.path, "model.path"))
            return self._inline(model, artifact)
        if model.name:
            version = f":{model.version}" if model.version else "@latest"
            return ModelRef(registered=f"{model.name}{version}")
        raise SpecError("model needs `path` (a file or folder) or `name` and `version`")

    def _inline(self, model: AzureModel, artifact: ArtifactRef) -> ModelRef:
        """An inline model: with a `name`, registered as that model's `version` ("1" when
        none is given), as az does; without one, anonymous."""
        if not model.name or self._register is None:
            return ModelRef(artifact=artifact)
        spec = AssetSpec(
            asset_kind=AssetKind.model,
            name=model.name,
            version=str(model.version) if model.version is not None else "1",
            description=model.description or "",
            type=model.type or "custom_model",
            artifact=artifact,
        )
        return ModelRef(registered=self._register(spec))

    def code(self, code: AzureCode | None) -> CodeConfiguration:
        if code is None:
            return CodeConfiguration()
        folder = code_folder(self.base, code)
        return CodeConfiguration(code=self._upload(folder), scoring_script=code.scoring_script)

    def environment(self, env: str | AzureEnvironment | None) -> EnvironmentSpec:
        if env is None:
            return EnvironmentSpec()
        if isinstance(env, str):
            return EnvironmentSpec(registered=_strip_azureml(env))
        inline = env.conda_file is not None or env.image is not None or env.build is not None
        if not inline and env.name and env.version:
            return EnvironmentSpec(registered=f"{env.name}:{env.version}")
        image, pip, conda = env.image or "", list[str](), ""
        if env.build is not None:
            # Read as `environment create` reads an environment's `build:` (asset_specs).
            from sluice.sdk.asset_specs import from_build  # not at the top: it imports this module

            found: list[str] = []
            try:
                built, pip, conda = from_build(self.base, env.build, found)
            except SpecError as exc:
                raise SpecError(f"environment.{exc}") from None
            self.warnings.extend(f"environment.{warning}" for warning in found)
            image = env.image or built
        if env.conda_file:
            conda = self.path(env.conda_file, "environment.conda_file").read_text()
        return EnvironmentSpec(conda_file=conda, image=image, pip_requirements=tuple(pip))


# ---- online deployment -----------------------------------------------------------------------


class AzureRequestSettings(_Azure):
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


class AzureProbe(_Azure):
    initial_delay: int = 10
    period: int = 10
    timeout: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30

    def to_spec(self) -> Probe:
        return Probe(
            initial_delay_s=self.initial_delay,
            period_s=self.period,
            timeout_s=self.timeout,
            success_threshold=self.success_threshold,
            failure_threshold=self.failure_threshold,
        )


class AzureScaleSettings(_Azure):
    type: Literal["default", "target_utilization"] = "default"
    min_instances: int = 1
    max_instances: int = 1
    target_utilization_percentage: int = 70
    polling_interval: int = 1


class AzureResources(_Azure):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return {k: str(v) for k, v in value.items()} if isinstance(value, Mapping) else value


class AzureCollection(_Azure):
    enabled: bool | str = False
    # Azure registers a data asset for the collection and may point it elsewhere; Sluice
    # always writes under its own datastore (docs/tracing.md), so these are accepted and
    # ignored with a warning (AzureDataCollector.ignored).
    data: dict[str, Any] | None = None
    client_id: str | None = None

    def to_spec(self) -> DataCollection:
        enabled = self.enabled
        if isinstance(enabled, str):  # Azure writes 'True' / 'False'
            if enabled.lower() not in ("true", "false"):
                raise SpecError(
                    f"data_collector: enabled must be 'True' or 'False', got {enabled!r}"
                )
            enabled = enabled.lower() == "true"
        return DataCollection(enabled=enabled)


class AzureRequestLogging(_Azure):
    capture_headers: list[str] = Field(default_factory=list)  # ignored with a warning


class AzureDataCollector(_Azure):
    collections: dict[str, AzureCollection] = Field(default_factory=dict)
    sampling_rate: float = 1.0
    rolling_rate: str = "hour"
    request_logging: AzureRequestLogging | None = None

    def to_spec(self) -> DataCollector:
        try:
            return DataCollector(
                collections={k: c.to_spec() for k, c in self.collections.items()},
                sampling_rate=self.sampling_rate,
                rolling_rate=self.rolling_rate,
            )
        except ValidationError as exc:
            raise SpecError(f"data_collector: {exc.errors()[0]['msg']}") from None

    def ignored(self, source: str, endpoint: str, deployment: str) -> list[str]:
        """Warnings for the Azure fields that are accepted and not used: a collection's
        `data` (its data asset and path) and `client_id`, `request_logging.capture_headers`."""
        folder = f"{COLLECTOR_PATH}/{endpoint}/{deployment}"
        warnings = []
        for name, collection in sorted(self.collections.items()):
            key = f"{source}: data_collector.collections.{name}"
            if collection.data:
                warnings.append(
                    f"{key}.data is ignored: Sluice writes {name} under "
                    f"<state>/{DATASTORE}/{DEFAULT_DATASTORE}/{folder}/{name} (azureml://"
                    f"datastores/{DEFAULT_DATASTORE}/paths/{folder}/{name}; "
                    "`sluice online-deployment collected` reads it)"
                )
            if collection.client_id:
                warnings.append(
                    f"{key}.client_id is ignored: the deployment's own user writes the "
                    "collected files (no managed identity)"
                )
        if self.request_logging is not None and self.request_logging.capture_headers:
            warnings.append(
                f"{source}: data_collector.request_logging.capture_headers is ignored: "
                "`request` records carry the method and path, no headers"
            )
        return warnings


class AzureOnlineDeployment(_Azure):
    name: str
    endpoint_name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    _tags_as_text = field_validator("tags", mode="before")(_scalars_as_text)
    type: Literal["managed", "kubernetes"] | None = None
    model: str | AzureModel | None = None
    code_configuration: AzureCode | None = None
    environment: str | AzureEnvironment | None = None
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1
    environment_variables: dict[str, str] = Field(default_factory=dict)
    request_settings: AzureRequestSettings = AzureRequestSettings()
    liveness_probe: AzureProbe = AzureProbe()
    readiness_probe: AzureProbe = AzureProbe()
    scale_settings: AzureScaleSettings = AzureScaleSettings()
    resources: AzureResources = AzureResources()
    app_insights_enabled: bool = False
    data_collector: AzureDataCollector | None = None
    egress_public_network_access: str = "enabled"

    _egress = field_validator("egress_public_network_access", mode="before")(egress_access)

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _env_as_text(cls, value: Any) -> Any:
        return {k: str(v) for k, v in value.items()} if isinstance(value, Mapping) else value

    def mlflow_folder(self, resolve: _Resolver) -> Path | None:
        """The MLflow model folder of a no-code deployment (no scoring script), else None."""
        if self.code_configuration is not None or self.model is None:
            return None
        path = self.model if isinstance(self.model, str) else self.model.path
        if not path or path.startswith("azureml:"):
            return None
        folder = resolve.path(path, "model.path")
        return folder if (folder / "MLmodel").is_file() else None

    def to_spec(self, resolve: _Resolver) -> OnlineDeploymentSpec:
        kubernetes = self.type == "kubernetes" or "kubernetes" in (self.schema_ or "").lower()
        scale = self.scale_settings
        mlflow = self.mlflow_folder(resolve) if self.environment is None else None
        environment = (
            mlflow_environment(mlflow) if mlflow else resolve.environment(self.environment)
        )
        return OnlineDeploymentSpec(
            name=self.name,
            endpoint_name=self.endpoint_name,
            description=self.description,
            tags=self.tags,
            kind=ComputeKind.kubernetes if kubernetes else ComputeKind.managed,
            model=resolve.model(self.model),
            code_configuration=resolve.code(self.code_configuration),
            environment=environment,
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            environment_variables=self.environment_variables,
            request_settings=RequestSettings(
                **self.request_settings.model_dump(exclude={"schema_"})
            ),
            liveness_probe=self.liveness_probe.to_spec(),
            readiness_probe=self.readiness_probe.to_spec(),
            scale_settings=ScaleSettings(
                type=scale.type,
                min_instances=scale.min_instances,
                max_instances=scale.max_instances,
                target_utilization_percentage=scale.target_utilization_percentage,
                polling_interval_s=scale.polling_interval,
            ),
            resources=ResourceRequirements(
                requests=self.resources.requests, limits=self.resources.limits
            ),
            app_insights_enabled=self.app_insights_enabled,
            data_collector=self.data_collector.to_spec()
            if self.data_collector
            else DataCollector(),
            egress_public_network_access=self.egress_public_network_access,
        )


# ---- batch ---------------------------------------------------------------------------------------


class AzureBatchDefaults(_Azure):
    deployment_name: str | None = None


class AzureBatchEndpoint(_Azure):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    _tags_as_text = field_validator("tags", mode="before")(_scalars_as_text)
    auth_mode: Literal["aad_token", "aml_token", "key"] = "aad_token"
    defaults: AzureBatchDefaults = AzureBatchDefaults()

    _auth_mode_case = field_validator("auth_mode", mode="before")(_lower_mode)

    def to_spec(self) -> BatchEndpointSpec:
        return BatchEndpointSpec(
            name=self.name,
            description=self.description,
            tags=self.tags,
            auth_mode=AuthMode.key if self.auth_mode == "key" else AuthMode.aml_token,
            default_deployment=self.defaults.deployment_name or "",
        )


class AzureRetrySettings(_Azure):
    max_retries: int = 3
    timeout: int = 30


class AzureBatchSettings(_Azure):
    max_concurrency_per_instance: int = 1
    mini_batch_size: int = 10
    output_action: Literal["append_row", "summary_only"] = "append_row"
    output_file_name: str = "predictions.csv"
    retry_settings: AzureRetrySettings = AzureRetrySettings()
    error_threshold: int = -1
    logging_level: str = "info"
    environment_variables: dict[str, str] = Field(default_factory=dict)

    def to_spec(self) -> BatchSettings:
        return BatchSettings(
            max_concurrency_per_instance=self.max_concurrency_per_instance,
            mini_batch_size=self.mini_batch_size,
            output_action=OutputAction(self.output_action),
            output_file_name=self.output_file_name,
            retry_settings=RetrySettings(
                max_retries=self.retry_settings.max_retries,
                timeout_s=self.retry_settings.timeout,
            ),
            error_threshold=self.error_threshold,
            logging_level=self.logging_level,
            environment_variables=self.environment_variables,
        )


BATCH_SETTING_KEYS = frozenset(AzureBatchSettings.model_fields) - {"schema_"}


class AzureBatchResources(_Azure):
    instance_count: int = 1


class AzureBatchDeployment(_Azure):
    name: str
    endpoint_name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    _tags_as_text = field_validator("tags", mode="before")(_scalars_as_text)
    type: Literal["model"] = "model"
    model: str | AzureModel | None = None
    code_configuration: AzureCode | None = None
    environment: str | AzureEnvironment | None = None
    compute: str = ""
    resources: AzureBatchResources = AzureBatchResources()
    settings: AzureBatchSettings = AzureBatchSettings()

    def to_spec(self, resolve: _Resolver) -> BatchDeploymentSpec:
        return BatchDeploymentSpec(
            name=self.name,
            endpoint_name=self.endpoint_name,
            description=self.description,
            tags=self.tags,
            model=resolve.model(self.model),
            code_configuration=resolve.code(self.code_configuration),
            environment=resolve.environment(self.environment),
            compute=_strip_azureml(self.compute),
            instance_count=self.resources.instance_count,
            settings=self.settings.to_spec(),
        )


# ---- loading -------------------------------------------------------------------------------------


Edits = Sequence[str | Edit]  # `--set` words, and `--add`/`--remove` edits, in order


def apply_sets(data: dict[str, Any], sets: Edits) -> dict[str, Any]:
    """Apply az's generic update arguments: `--set a.b=value` words and `Edit`s, in order."""
    edits = [e if isinstance(e, Edit) else Edit("set", (e,)) for e in sets]
    try:
        return generic_update.apply(data, edits)
    except GenericUpdateError as exc:
        raise SpecError(str(exc)) from None


MAX_YAML_BYTES = 1024 * 1024


def read_yaml(path: Path | None, sets: Edits = ()) -> dict[str, Any]:
    """The YAML mapping in `path` (or {} without a file) with `--set` overrides applied."""
    data: Any = {}
    if path is not None:
        if not path.is_file():
            raise SpecError(f"{path}: no such file")
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise SpecError(
                f"{path}: {size} bytes; a specification file may hold at most {MAX_YAML_BYTES} "
                "(model and code go in folders named by `path:`, not inline)"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError(f"{path}:{where}: invalid YAML: {problem}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return apply_sets(data, sets)


def _split_azure_only(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    ignored = sorted(k for k in data if k in AZURE_ONLY)
    return {k: v for k, v in data.items() if k not in AZURE_ONLY}, ignored


def _validate(model: type[Any], data: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the Azure ML schema)"
        elif first["type"] == "missing":
            message = "required field is missing"
        extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise SpecError(f"{source}: {where}: {message}{extra}") from None


@dataclass(frozen=True)
class Loaded(Generic[S]):
    spec: S
    warnings: list[str]
    # Top-level fields the YAML (with --set) named: tells "traffic: {}" from no traffic at all.
    named: frozenset[str] = frozenset()


def _prepare(
    path: Path | None,
    sets: Edits,
    overrides: Mapping[str, str | None],
    base: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str], str]:
    data = apply_sets(dict(base), sets) if base is not None else read_yaml(path, sets)
    data.update({k: v for k, v in overrides.items() if v})
    data, ignored = _split_azure_only(data)
    source = str(path) if path else "command line"
    warnings = [
        f"{source}: {key} is an Azure-only field; ignored" + AZURE_ONLY_WHY.get(key, "")
        for key in ignored
    ]
    return data, warnings, source


def load_online_endpoint(
    path: Path | None,
    sets: Edits = (),
    *,
    name: str | None = None,
    base: Mapping[str, Any] | None = None,
) -> Loaded[OnlineEndpointSpec]:
    """From a YAML file, or from `base` (the stored endpoint) when updating by name."""
    data, warnings, source = _prepare(path, sets, {"name": name}, base)
    model: AzureOnlineEndpoint = _validate(AzureOnlineEndpoint, data, source)
    return Loaded(model.to_spec(), warnings, frozenset(data))


def _custom_container_warnings(
    model: AzureOnlineDeployment | AzureBatchDeployment, source: str
) -> list[str]:
    """Azure runs an inline environment with `inference_config` as a custom container: the
    image's own server (TF Serving, TorchServe, Triton, R plumber) on the routes it names.
    Sluice runs its own inference server only, so such a deployment with no scoring script
    would run something other than what it says: refused. With a scoring script, Sluice's
    server runs it; the warning says the routes are not served."""
    env = model.environment
    if not isinstance(env, AzureEnvironment) or env.inference_config is None:
        return []
    if model.code_configuration is None:
        raise SpecError(
            f"{source}: custom containers (environment.inference_config) are not run by "
            "Sluice: it serves every deployment with its own inference server (/score, "
            "/liveness, /readiness) running a scoring script (code_configuration) or an "
            "MLflow model, not the image's server; give the deployment a scoring script, or "
            "deploy an MLflow model"
        )
    return [
        f"{source}: environment.inference_config is ignored: the container's routes are not "
        "served; Sluice's inference server runs code_configuration's scoring script at /score"
    ]


def load_online_deployment(
    path: Path | None,
    upload: Uploader,
    sets: Edits = (),
    *,
    name: str | None = None,
    endpoint_name: str | None = None,
    register: ModelRegistrar | None = None,
) -> Loaded[OnlineDeploymentSpec]:
    data, warnings, source = _prepare(path, sets, {"name": name, "endpoint_name": endpoint_name})
    model: AzureOnlineDeployment = _validate(AzureOnlineDeployment, data, source)
    warnings += _custom_container_warnings(model, source)
    if model.data_collector is not None:
        warnings += model.data_collector.ignored(source, model.endpoint_name, model.name)
    resolver = _Resolver(path.parent if path else Path.cwd(), upload, register)
    spec = model.to_spec(resolver)
    return Loaded(spec, warnings + resolver.warnings)


def load_batch_endpoint(
    path: Path | None,
    sets: Edits = (),
    *,
    name: str | None = None,
    base: Mapping[str, Any] | None = None,
) -> Loaded[BatchEndpointSpec]:
    data, warnings, source = _prepare(path, sets, {"name": name}, base)
    model: AzureBatchEndpoint = _validate(AzureBatchEndpoint, data, source)
    return Loaded(model.to_spec(), warnings)


# Azure's batch `resources:` (a job resource configuration) beyond instance_count: nothing
# of them applies to local workers.
BATCH_RESOURCES_IGNORED = ("instance_type", "properties", "shm_size", "docker_args", "locations")


def _fold_batch_resources(data: dict[str, Any], warnings: list[str], source: str) -> None:
    """Azure's schema also takes `settings.instance_count` (the same as
    `resources.instance_count`) and more resource fields than apply here (ignored, said)."""
    settings, resources = data.get("settings"), data.get("resources")
    if isinstance(settings, dict) and "instance_count" in settings:
        count = settings.pop("instance_count")
        resources = data.setdefault("resources", {}) if resources is None else resources
        if not isinstance(resources, dict):
            raise SpecError(f"{source}: resources: expected a mapping")
        if resources.get("instance_count", count) != count:
            raise SpecError(
                f"{source}: settings.instance_count ({count}) and resources.instance_count "
                f"({resources['instance_count']}) disagree; give one"
            )
        resources["instance_count"] = count
    if isinstance(resources, dict):
        for key in BATCH_RESOURCES_IGNORED:
            if key in resources:
                del resources[key]
                warnings.append(
                    f"{source}: resources.{key} does not apply to local batch workers; ignored"
                    + (" (their instance type is the compute's)" if key == "instance_type" else "")
                )


def load_batch_deployment(
    path: Path | None,
    upload: Uploader,
    sets: Edits = (),
    *,
    name: str | None = None,
    endpoint_name: str | None = None,
    register: ModelRegistrar | None = None,
) -> Loaded[BatchDeploymentSpec]:
    data, warnings, source = _prepare(path, sets, {"name": name, "endpoint_name": endpoint_name})
    if str(data.get("type", "")).lower() == "pipeline":
        raise SpecError(
            f"{source}: pipeline batch deployments (type: pipeline) are not supported by "
            "Sluice: only model deployments run (type: model, with a model and, unless it is "
            "an MLflow model, a code_configuration)"
        )
    # The older schema puts batch settings at the top level; fold them into `settings:`.
    legacy = {k: data.pop(k) for k in list(data) if k in BATCH_SETTING_KEYS}
    if legacy:
        settings = data.setdefault("settings", {})
        if not isinstance(settings, dict):
            raise SpecError(f"{source}: settings: expected a mapping")
        clash = sorted(set(legacy) & set(settings))
        if clash:
            raise SpecError(
                f"{source}: {', '.join(clash)} given both at the top level and under settings:"
            )
        settings.update(legacy)
    _fold_batch_resources(data, warnings, source)
    model: AzureBatchDeployment = _validate(AzureBatchDeployment, data, source)
    warnings += _custom_container_warnings(model, source)
    resolver = _Resolver(path.parent if path else Path.cwd(), upload, register)
    spec = model.to_spec(resolver)
    return Loaded(spec, warnings + resolver.warnings)


@dataclass(frozen=True)
class LocalFiles:
    """A deployment YAML read for `--local`: the user's own files, nothing uploaded."""

    name: str
    endpoint_name: str
    model: Path | None
    code: Path | None
    scoring_script: str | None
    conda_file: Path | None
    request_settings: RequestSettings
    environment_variables: dict[str, str]
    warnings: list[str]
    # The environment the platform would build for it (inline conda file, build context or
    # an MLflow model's own); empty for none, or for a registered one (not readable here).
    environment: EnvironmentSpec = dataclasses.field(default_factory=EnvironmentSpec)


def load_local_deployment(
    path: Path | None,
    sets: Edits = (),
    *,
    name: str | None = None,
    endpoint_name: str | None = None,
) -> LocalFiles:
    data, warnings, source = _prepare(path, sets, {"name": name, "endpoint_name": endpoint_name})
    model: AzureOnlineDeployment = _validate(AzureOnlineDeployment, data, source)
    warnings += _custom_container_warnings(model, source)
    base = path.parent if path else Path.cwd()
    model_path: Path | None = None
    if isinstance(model.model, AzureModel) and model.model.path:
        model_path = resolve_path(base, model.model.path, "model.path")
    elif isinstance(model.model, str) and not model.model.startswith("azureml:"):
        model_path = resolve_path(base, model.model, "model")
    elif model.model is not None:
        warnings.append("a registered model cannot run locally; give the model's path")
    code = model.code_configuration
    code_path = code_folder(base, code) if code else None
    conda: Path | None = None
    if isinstance(model.environment, AzureEnvironment) and model.environment.conda_file:
        conda = resolve_path(base, model.environment.conda_file, "environment.conda_file")
    resolver = _Resolver(base, _no_upload)
    mlflow = model.mlflow_folder(resolver) if model.environment is None else None
    environment = mlflow_environment(mlflow) if mlflow else resolver.environment(model.environment)
    warnings += resolver.warnings
    if environment.registered:
        warnings.append(
            f"the registered environment {environment.registered} cannot be built locally; "
            "the deployment runs in this Python environment"
        )
        environment = EnvironmentSpec()
    return LocalFiles(
        name=model.name,
        endpoint_name=model.endpoint_name,
        model=model_path,
        code=code_path,
        scoring_script=code.scoring_script if code else None,
        conda_file=conda,
        request_settings=RequestSettings(**model.request_settings.model_dump(exclude={"schema_"})),
        environment_variables=model.environment_variables,
        warnings=warnings,
        environment=environment,
    )


# ---- update by name (no file) ------------------------------------------------------------------

# The model, code and environment were uploaded from files on the machine that created
# the deployment, so a file-less update changes them only to what names no file here: a
# registered model or environment (`--set model=azureml:my-model:2`), and another script
# of the stored code (`--set code_configuration.scoring_script=other.py`; the registry
# checks that the code holds it). Anything else of them needs --file.
_FILE_ONLY = ("model", "code_configuration", "environment")


def _probe_fields(probe: Probe) -> dict[str, int]:
    return {
        "initial_delay": probe.initial_delay_s,
        "period": probe.period_s,
        "timeout": probe.timeout_s,
        "success_threshold": probe.success_threshold,
        "failure_threshold": probe.failure_threshold,
    }


def _is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith("azureml:")


def _only_script(value: object) -> bool:
    """`--set code_configuration.scoring_script=X` and nothing else of the code."""
    return (
        isinstance(value, dict)
        and set(value) == {"scoring_script"}
        and isinstance(value["scoring_script"], str)
        and bool(value["scoring_script"])
    )


def _with_script(code: CodeConfiguration, script: str, what: str) -> CodeConfiguration:
    if code.code is None:
        raise SpecError(
            f"{what} has no code_configuration.code to run {script!r} from; give its YAML "
            "with --file"
        )
    return code.model_copy(update={"scoring_script": script})


def _file_only_parts(
    data: dict[str, Any], current: OnlineDeploymentSpec | BatchDeploymentSpec, what: str
) -> dict[str, Any]:
    """The edited deployment's model, code and environment (taken out of `data`): the
    stored ones, or what the edits name without a file."""
    parts = {key: getattr(current, key) for key in _FILE_ONLY}
    resolve = _Resolver(Path.cwd(), _no_upload)
    refused = []
    for key in _FILE_ONLY:
        if key not in data:
            continue
        value = data.pop(key)
        if key == "model" and _is_reference(value):
            parts[key] = resolve.model(value)
        elif key == "environment" and _is_reference(value):
            parts[key] = resolve.environment(value)
        elif key == "code_configuration" and _only_script(value):
            parts[key] = _with_script(current.code_configuration, value["scoring_script"], what)
        else:
            refused.append(key)
    if refused:
        raise SpecError(
            f"{', '.join(refused)} of {what} can only be changed with --file (its YAML, whose "
            "paths name the files), except to a registered model or environment "
            "(--set model=azureml:<name>:<version>) or to another script of the stored code "
            "(--set code_configuration.scoring_script=<file>); --set/--add/--remove change "
            "the other fields"
        )
    return parts


def _no_upload(path: Path) -> ArtifactRef:
    """The uploader of what uploads nothing: an update without --file, a --local run."""
    raise SpecError(f"{path}: nothing is uploaded here")


def edit_online_deployment(
    current: OnlineDeploymentSpec, sets: Edits
) -> Loaded[OnlineDeploymentSpec]:
    """`online-deployment update -n D -e E --set instance_count=2`: the stored deployment's
    YAML fields with az's generic update arguments applied, validated like a file."""
    s = current.scale_settings
    fields: dict[str, Any] = {
        "name": current.name,
        "endpoint_name": current.endpoint_name,
        "description": current.description,
        "tags": dict(current.tags),
        "instance_type": current.instance_type,
        "instance_count": current.instance_count,
        "environment_variables": dict(current.environment_variables),
        "request_settings": current.request_settings.model_dump(),
        "liveness_probe": _probe_fields(current.liveness_probe),
        "readiness_probe": _probe_fields(current.readiness_probe),
        "scale_settings": {
            "type": s.type,
            "min_instances": s.min_instances,
            "max_instances": s.max_instances,
            "target_utilization_percentage": s.target_utilization_percentage,
            "polling_interval": s.polling_interval_s,
        },
        "resources": current.resources.model_dump(),
        "app_insights_enabled": current.app_insights_enabled,
        "egress_public_network_access": current.egress_public_network_access,
    }
    if current.data_collector.collections:
        fields["data_collector"] = azure_data_collector(current.data_collector)
    edits = apply_sets(fields, sets)
    parts = _file_only_parts(edits, current, f"deployment {current.name}")
    data, warnings, source = _prepare(None, (), {}, edits)
    model: AzureOnlineDeployment = _validate(AzureOnlineDeployment, data, source)
    if model.data_collector is not None:
        warnings += model.data_collector.ignored(source, model.endpoint_name, model.name)
    edited = model.to_spec(_Resolver(Path.cwd(), _no_upload))
    return Loaded(edited.model_copy(update={**parts, "kind": current.kind}), warnings)


def edit_batch_deployment(current: BatchDeploymentSpec, sets: Edits) -> Loaded[BatchDeploymentSpec]:
    """`batch-deployment update -n D -e E --set settings.mini_batch_size=5` without a file."""
    st = current.settings
    # Flat, as `az ml batch-deployment show` prints it; `settings.<key>` edits win over these.
    flat: dict[str, Any] = {
        "max_concurrency_per_instance": st.max_concurrency_per_instance,
        "mini_batch_size": st.mini_batch_size,
        "output_action": st.output_action.value,
        "output_file_name": st.output_file_name,
        "retry_settings": {
            "max_retries": st.retry_settings.max_retries,
            "timeout": st.retry_settings.timeout_s,
        },
        "error_threshold": st.error_threshold,
        "logging_level": st.logging_level,
        "environment_variables": dict(st.environment_variables),
    }
    fields: dict[str, Any] = {
        "name": current.name,
        "endpoint_name": current.endpoint_name,
        "description": current.description,
        "tags": dict(current.tags),
        "compute": current.compute,
        "resources": {"instance_count": current.instance_count},
        **flat,
    }
    edits = apply_sets(fields, sets)
    parts = _file_only_parts(edits, current, f"batch deployment {current.name}")
    data, warnings, source = _prepare(None, (), {}, edits)
    nested = data.get("settings") or {}
    if not isinstance(nested, dict):
        raise SpecError(f"{source}: settings: expected a mapping")
    legacy = {k: data.pop(k) for k in list(data) if k in BATCH_SETTING_KEYS}
    data["settings"] = {**legacy, **nested}
    model: AzureBatchDeployment = _validate(AzureBatchDeployment, data, source)
    edited = model.to_spec(_Resolver(Path.cwd(), _no_upload))
    return Loaded(edited.model_copy(update=parts), warnings)


def azure_data_collector(dc: DataCollector) -> dict[str, Any]:
    """A stored `data_collector` in the YAML's form (Azure's 'True'/'False' strings)."""
    return {
        "collections": {k: {"enabled": str(c.enabled)} for k, c in dc.collections.items()},
        "sampling_rate": dc.sampling_rate,
        "rolling_rate": dc.rolling_rate,
    }
