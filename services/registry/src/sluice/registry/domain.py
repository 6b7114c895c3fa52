"""The registry's rules: names, traffic, settings ranges. Pure logic, no I/O.

Every rule raises a `DomainError` whose message says what to fix; api.py maps
the error classes to gRPC status codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum

from sluice.common.resources import (
    BatchDeploymentSpec,
    BatchEndpointSpec,
    ComputeKind,
    OnlineDeploymentSpec,
    OnlineEndpointSpec,
    Probe,
)

NAME_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MAX_MIRROR_PERCENT = 50
MAX_REQUEST_TIMEOUT_MS = 180_000  # Azure's managed deployments
MAX_KUBERNETES_REQUEST_TIMEOUT_MS = 300_000  # Azure's Kubernetes deployments
LOGGING_LEVELS = ("debug", "info", "warning", "error", "critical")  # a batch deployment's
MAX_INSTANCES = 100
MAX_CONCURRENT_REQUESTS = 1000
# Free text stays small enough that a page of a listing fits gRPC's 4 MB message cap.
MAX_DESCRIPTION = 4096
MAX_TAGS = 50  # Azure Resource Manager's tag limits: 50 tags, names 512, values 256
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
MAX_ENVIRONMENT_VARIABLES = 100
MAX_ENVIRONMENT_VALUE = 8192


class DomainError(Exception):
    """A request the registry refuses; the message tells the user what to do."""


class InvalidArgument(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Conflict(DomainError):
    """Someone else changed the resource since the caller read it (optimistic concurrency)."""


class EndpointKind(StrEnum):
    """Online and batch endpoints share one name space: a name is one host name
    (`<name>.<region>.inference.ml.azure.com` on Azure, `/endpoints/<name>/` here), under
    which an online endpoint answers `/score` and a batch endpoint `/jobs`."""

    online = "online"
    batch = "batch"

    @property
    def other(self) -> EndpointKind:
        return EndpointKind.batch if self is EndpointKind.online else EndpointKind.online


def name_taken(name: str, holder: EndpointKind, holder_name: str) -> AlreadyExists:
    """The refusal of an endpoint name that an endpoint of the other kind holds."""
    return AlreadyExists(
        f"endpoint name {name!r} is taken by the {holder} endpoint {holder_name!r}: online and "
        "batch endpoint names share one namespace (one host name); choose another name"
    )


def check_name(kind: str, name: str) -> None:
    if not 3 <= len(name) <= 32 or not NAME_RE.match(name):
        raise InvalidArgument(
            f"{kind} name {name!r} is invalid: use 3-32 characters, start with a letter, "
            "then letters, digits or '-', and end with a letter or digit"
        )


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} must be between {low} and {high}, got {value}")


# ---- traffic ---------------------------------------------------------------------


def _check_shares(label: str, shares: Mapping[str, int], deployments: Iterable[str]) -> None:
    known = set(deployments)
    for name, share in shares.items():
        if name not in known:
            listing = ", ".join(sorted(known)) or "none yet"
            raise InvalidArgument(
                f"{label} names deployment {name!r}, which does not exist "
                f"(deployments of this endpoint: {listing})"
            )
        if not isinstance(share, int) or isinstance(share, bool) or not 0 <= share <= 100:
            raise InvalidArgument(
                f"{label} for {name!r} must be a whole percentage 0-100, got {share!r}"
            )


def merge_traffic(
    current: Mapping[str, int], changes: Mapping[str, int], deployments: Iterable[str]
) -> dict[str, int]:
    """Apply `changes` to `current`; deployments not named keep their share.

    Nothing is rebalanced implicitly: the result must sum to 100 or be all 0.
    """
    deployments = list(deployments)
    _check_shares("traffic", changes, deployments)
    merged = {name: share for name, share in {**current, **changes}.items() if share > 0}
    total = sum(merged.values())
    if total not in (0, 100):
        split = ", ".join(f"{k}={v}" for k, v in sorted(merged.items()))
        raise InvalidArgument(
            f"traffic must sum to 100 (or be all 0), but {split} sums to {total}; "
            "name every deployment whose share changes, e.g. --traffic blue=90 green=10"
        )
    return merged


def merge_mirror(
    current: Mapping[str, int],
    changes: Mapping[str, int],
    traffic: Mapping[str, int],
    deployments: Iterable[str],
) -> dict[str, int]:
    """Apply mirror `changes`: one deployment at most, at most 50%, never one with live traffic."""
    _check_shares("mirror traffic", changes, deployments)
    merged = {name: share for name, share in {**current, **changes}.items() if share > 0}
    check_mirror(merged, traffic)
    return merged


def check_mirror(mirror: Mapping[str, int], traffic: Mapping[str, int]) -> None:
    active = {name: share for name, share in mirror.items() if share > 0}
    if len(active) > 1:
        raise InvalidArgument(
            f"mirror traffic can go to one deployment only, got {sorted(active)}; "
            "set the others to 0"
        )
    for name, share in active.items():
        if share > MAX_MIRROR_PERCENT:
            raise InvalidArgument(
                f"mirror traffic to {name!r} is {share}%, the most allowed is {MAX_MIRROR_PERCENT}%"
            )
        if traffic.get(name, 0) > 0:
            raise InvalidArgument(
                f"deployment {name!r} takes {traffic[name]}% of live traffic and cannot also "
                "receive mirrored traffic; set its mirror share to 0 first"
            )


# ---- specs -----------------------------------------------------------------------------


def check_text(kind: str, name: str, description: str, tags: Mapping[str, str]) -> None:
    """Descriptions and tags have limits, so no resource can break a listing or the store."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(
            f"{kind} {name!r}: description is {len(description)} characters; "
            f"at most {MAX_DESCRIPTION} are allowed"
        )
    _check_pairs(f"{kind} {name!r}: tags", tags, MAX_TAGS, MAX_TAG_NAME, MAX_TAG_VALUE)


def check_length(label: str, text: str, limit: int) -> None:
    """A text field of at most `limit` characters."""
    if len(text) > limit:
        raise InvalidArgument(f"{label} is {len(text)} characters; at most {limit} are allowed")


def _check_pairs(
    label: str, pairs: Mapping[str, str], count: int, key_len: int, value_len: int
) -> None:
    if len(pairs) > count:
        raise InvalidArgument(f"{label}: {len(pairs)} given, at most {count} are allowed")
    for key, value in pairs.items():
        if len(key) > key_len:
            raise InvalidArgument(f"{label}: name {key[:40]!r}... is over {key_len} characters")
        if len(value) > value_len:
            raise InvalidArgument(f"{label}: value of {key!r} is over {value_len} characters")


def check_online_endpoint(spec: OnlineEndpointSpec) -> None:
    check_name("endpoint", spec.name)
    check_text("endpoint", spec.name, spec.description, spec.tags)
    if spec.kind is ComputeKind.kubernetes and not spec.compute:
        raise InvalidArgument(
            f"kubernetes endpoint {spec.name!r} needs `compute` (the cluster's compute name)"
        )


def _check_probe(field: str, probe: Probe) -> None:
    _check_range(f"{field}.initial_delay", probe.initial_delay_s, 0, 3600)
    _check_range(f"{field}.period", probe.period_s, 1, 3600)
    _check_range(f"{field}.timeout", probe.timeout_s, 1, 3600)
    _check_range(f"{field}.success_threshold", probe.success_threshold, 1, 1000)
    _check_range(f"{field}.failure_threshold", probe.failure_threshold, 1, 1000)


def check_online_deployment(spec: OnlineDeploymentSpec, endpoint: OnlineEndpointSpec) -> None:
    check_name("deployment", spec.name)
    check_text("deployment", spec.name, spec.description, spec.tags)
    _check_pairs(
        f"deployment {spec.name!r}: environment_variables",
        spec.environment_variables,
        MAX_ENVIRONMENT_VARIABLES,
        MAX_TAG_NAME,
        MAX_ENVIRONMENT_VALUE,
    )
    if spec.kind is not endpoint.kind:
        raise InvalidArgument(
            f"deployment {spec.name!r} is {spec.kind.value} but endpoint {endpoint.name!r} is "
            f"{endpoint.kind.value}; use the matching deployment schema"
        )
    _check_range("instance_count", spec.instance_count, 1, MAX_INSTANCES)
    rs = spec.request_settings
    timeout_cap = (
        MAX_KUBERNETES_REQUEST_TIMEOUT_MS
        if spec.kind is ComputeKind.kubernetes
        else MAX_REQUEST_TIMEOUT_MS
    )
    _check_range("request_settings.request_timeout_ms", rs.request_timeout_ms, 1, timeout_cap)
    _check_range(
        "request_settings.max_concurrent_requests_per_instance",
        rs.max_concurrent_requests_per_instance,
        1,
        MAX_CONCURRENT_REQUESTS,
    )
    _check_range("request_settings.max_queue_wait_ms", rs.max_queue_wait_ms, 0, 180_000)
    _check_probe("liveness_probe", spec.liveness_probe)
    _check_probe("readiness_probe", spec.readiness_probe)
    scale = spec.scale_settings
    if scale.type not in ("default", "target_utilization"):
        raise InvalidArgument(
            f"scale_settings.type must be 'default' or 'target_utilization', got {scale.type!r}"
        )
    # 0: the deployment scales to zero when idle (docs/autoscale.md), whatever the type.
    _check_range("scale_settings.min_instances", scale.min_instances, 0, MAX_INSTANCES)
    if scale.min_instances == 0 and spec.kind is ComputeKind.kubernetes:
        raise InvalidArgument(
            "scale_settings.min_instances 0 (scale to zero) is for managed deployments: on "
            "Kubernetes a deployment keeps at least one pod (docs/autoscale.md, Kubernetes)"
        )
    if scale.type == "target_utilization":
        _check_range(
            "scale_settings.max_instances", scale.max_instances, scale.min_instances, MAX_INSTANCES
        )
        _check_range(
            "scale_settings.target_utilization_percentage",
            scale.target_utilization_percentage,
            1,
            100,
        )
        _check_range("scale_settings.polling_interval", scale.polling_interval_s, 1, 3600)
    _check_model_and_code(spec.name, spec.model.artifact, spec.model.registered, spec)


def _check_model_and_code(
    name: str,
    artifact: object | None,
    registered: str | None,
    spec: OnlineDeploymentSpec | BatchDeploymentSpec,
) -> None:
    code = spec.code_configuration
    if artifact is None and not registered and code.code is None:
        raise InvalidArgument(f"deployment {name!r} needs a model, a code_configuration or both")
    if code.code is not None and not code.scoring_script:
        raise InvalidArgument(
            f"deployment {name!r}: code_configuration.scoring_script is required with code"
        )


def check_batch_endpoint(spec: BatchEndpointSpec) -> None:
    check_name("batch endpoint", spec.name)
    check_text("batch endpoint", spec.name, spec.description, spec.tags)


def check_batch_deployment(spec: BatchDeploymentSpec) -> None:
    check_name("deployment", spec.name)
    check_text("deployment", spec.name, spec.description, spec.tags)
    _check_range("resources.instance_count", spec.instance_count, 1, MAX_INSTANCES)
    s = spec.settings
    _check_range("max_concurrency_per_instance", s.max_concurrency_per_instance, 1, 1000)
    _check_range("mini_batch_size", s.mini_batch_size, 1, 1_000_000)
    _check_range("retry_settings.max_retries", s.retry_settings.max_retries, 0, 100)
    _check_range("retry_settings.timeout", s.retry_settings.timeout_s, 1, 86_400)
    if s.error_threshold < -1:
        raise InvalidArgument(
            f"error_threshold must be -1 (ignore all failures) or >= 0, got {s.error_threshold}"
        )
    if not s.output_file_name or "/" in s.output_file_name or s.output_file_name in (".", ".."):
        raise InvalidArgument(
            f"output_file_name must be a plain file name, got {s.output_file_name!r}"
        )
    if s.logging_level.lower() not in LOGGING_LEVELS:
        raise InvalidArgument(
            f"logging_level must be one of {', '.join(LOGGING_LEVELS)} (a level name of "
            f"Python's logging), got {s.logging_level!r}"
        )
    _check_model_and_code(spec.name, spec.model.artifact, spec.model.registered, spec)


def check_deletable(deployment: str, traffic: Mapping[str, int], mirror: Mapping[str, int]) -> None:
    """A deployment that still takes live or mirrored traffic cannot be deleted."""
    if traffic.get(deployment, 0) > 0:
        raise FailedPrecondition(
            f"deployment {deployment!r} still takes {traffic[deployment]}% of live traffic; "
            f"move it first, e.g. `sluice online-endpoint update --traffic {deployment}=0 ...` "
            "so the others sum to 100"
        )
    if mirror.get(deployment, 0) > 0:
        raise FailedPrecondition(
            f"deployment {deployment!r} still receives {mirror[deployment]}% mirrored traffic; "
            f"set it to 0 first: `sluice online-endpoint update --mirror-traffic {deployment}=0`"
        )
