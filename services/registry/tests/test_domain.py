"""The registry's rules as pure functions: names, traffic merges, mirror limits, deletes."""

from __future__ import annotations

import re

import pytest

from sluice.common.resources import (
    ComputeKind,
    ModelRef,
    OnlineDeploymentSpec,
    OnlineEndpointSpec,
    ScaleSettings,
)
from sluice.registry import domain
from sluice.registry.domain import FailedPrecondition, InvalidArgument


@pytest.mark.parametrize("name", ["abc", "my-endpoint", "A1-b2", "x" * 32])
def test_valid_names(name: str) -> None:
    domain.check_name("endpoint", name)


@pytest.mark.parametrize("name", ["ab", "x" * 33, "1abc", "-abc", "abc-", "a_bc", "a.bc", ""])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="use 3-32 characters"):
        domain.check_name("endpoint", name)


def test_traffic_merge_touches_only_named_deployments() -> None:
    merged = domain.merge_traffic(
        {"blue": 90, "green": 10}, {"blue": 80, "red": 10}, ["blue", "green", "red"]
    )
    assert merged == {"blue": 80, "green": 10, "red": 10}


def test_traffic_all_zero_is_allowed_and_zero_shares_are_dropped() -> None:
    assert domain.merge_traffic({"blue": 100}, {"blue": 0}, ["blue"]) == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"blue": 50}, "sums to 50"),
        ({"gone": 0}, "'gone', which does not exist"),
        ({"blue": -1}, "whole percentage"),
        ({"blue": 150}, "whole percentage"),
        ({"blue": True}, "whole percentage"),
    ],
)
def test_traffic_errors(changes: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        domain.merge_traffic({}, changes, ["blue"])


def test_mirror_rules() -> None:
    assert domain.merge_mirror({}, {"green": 50}, {"blue": 100}, ["blue", "green"]) == {"green": 50}
    with pytest.raises(InvalidArgument, match="most allowed is 50%"):
        domain.merge_mirror({}, {"green": 51}, {"blue": 100}, ["blue", "green"])
    with pytest.raises(InvalidArgument, match="one deployment only"):
        domain.merge_mirror({"green": 10}, {"red": 10}, {"blue": 100}, ["blue", "green", "red"])
    with pytest.raises(InvalidArgument, match="cannot also receive mirrored traffic"):
        domain.merge_mirror({}, {"blue": 10}, {"blue": 100}, ["blue", "green"])


def test_moving_live_traffic_onto_the_mirror_target_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="cannot also receive mirrored traffic"):
        domain.check_mirror({"green": 10}, {"blue": 90, "green": 10})


def test_deleting_a_deployment_with_traffic_says_how_to_fix_it() -> None:
    with pytest.raises(FailedPrecondition, match="--traffic blue=0"):
        domain.check_deletable("blue", {"blue": 100}, {})
    with pytest.raises(FailedPrecondition, match="--mirror-traffic green=0"):
        domain.check_deletable("green", {"blue": 100}, {"green": 10})
    domain.check_deletable("green", {"blue": 100}, {})


def test_deployment_kind_must_match_the_endpoint() -> None:
    endpoint = OnlineEndpointSpec(
        name="k8s-endpoint", kind=ComputeKind.kubernetes, compute="cluster"
    )
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="k8s-endpoint",
        model={"registered": "m:1"},  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidArgument, match="use the matching deployment schema"):
        domain.check_online_deployment(spec, endpoint)


def test_a_deployment_needs_a_model_or_code() -> None:
    endpoint = OnlineEndpointSpec(name="endpoint")
    with pytest.raises(InvalidArgument, match="needs a model"):
        domain.check_online_deployment(
            OnlineDeploymentSpec(name="blue", endpoint_name="endpoint"), endpoint
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"description": "x" * 4097}, "description is 4097 characters; at most 4096"),
        ({"tags": {f"t{i}": "v" for i in range(51)}}, "tags: 51 given, at most 50"),
        ({"tags": {"k": "v" * 257}}, "value of 'k' is over 256"),
        ({"environment_variables": {"A": "v" * 8193}}, "value of 'A' is over 8192"),
    ],
)
def test_free_text_has_limits(changes: dict[str, object], message: str) -> None:
    endpoint = OnlineEndpointSpec(name="my-endpoint")
    spec = OnlineDeploymentSpec(
        name="blue", endpoint_name="my-endpoint", **changes, model=ModelRef(registered="m:1")
    )
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        domain.check_online_deployment(spec, endpoint)
    if "description" in changes or "tags" in changes:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            domain.check_online_endpoint(endpoint.model_copy(update=changes))


def test_scale_to_zero_is_allowed_by_any_scale_type_and_negative_minimums_are_refused() -> None:
    endpoint = OnlineEndpointSpec(name="my-endpoint")
    blue = OnlineDeploymentSpec(
        name="blue", endpoint_name="my-endpoint", model=ModelRef(registered="m:1")
    )
    for kind in ("default", "target_utilization"):
        zero = ScaleSettings(type=kind, min_instances=0, max_instances=2)
        domain.check_online_deployment(blue.model_copy(update={"scale_settings": zero}), endpoint)
        negative = zero.model_copy(update={"min_instances": -1})
        with pytest.raises(InvalidArgument, match="min_instances must be between 0 and"):
            domain.check_online_deployment(
                blue.model_copy(update={"scale_settings": negative}), endpoint
            )


def test_scale_to_zero_is_refused_on_kubernetes() -> None:
    """No activator holds requests for a Kubernetes deployment: min_instances 0 is refused
    there with the reason, rather than silently rendered as one pod."""
    endpoint = OnlineEndpointSpec(
        name="k8s-endpoint", kind=ComputeKind.kubernetes, compute="cluster"
    )
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="k8s-endpoint",
        kind=ComputeKind.kubernetes,
        model=ModelRef(registered="m:1"),
        scale_settings=ScaleSettings(min_instances=0),
    )
    with pytest.raises(InvalidArgument, match="on Kubernetes a deployment keeps at least one"):
        domain.check_online_deployment(spec, endpoint)
    one = spec.model_copy(update={"scale_settings": ScaleSettings(min_instances=1)})
    domain.check_online_deployment(one, endpoint)


def test_request_timeout_caps_are_azures_per_compute() -> None:
    """180 s on managed endpoints, 300 s on Kubernetes ones (Azure's limits)."""
    k8s = OnlineEndpointSpec(name="k8s-endpoint", kind=ComputeKind.kubernetes, compute="cluster")
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="k8s-endpoint",
        kind=ComputeKind.kubernetes,
        model=ModelRef(registered="m:1"),
    )

    def timed(base: OnlineDeploymentSpec, ms: int) -> OnlineDeploymentSpec:
        settings = base.request_settings.model_copy(update={"request_timeout_ms": ms})
        return base.model_copy(update={"request_settings": settings})

    domain.check_online_deployment(timed(spec, 300_000), k8s)
    with pytest.raises(InvalidArgument, match="between 1 and 300000"):
        domain.check_online_deployment(timed(spec, 300_001), k8s)
    managed = OnlineEndpointSpec(name="endpoint")
    plain = spec.model_copy(update={"kind": ComputeKind.managed, "endpoint_name": "endpoint"})
    domain.check_online_deployment(timed(plain, 180_000), managed)
    with pytest.raises(InvalidArgument, match="between 1 and 180000"):
        domain.check_online_deployment(timed(plain, 300_000), managed)


def test_batch_settings_logging_level_and_output_name_are_checked() -> None:
    from sluice.common.resources import BatchDeploymentSpec

    spec = BatchDeploymentSpec(
        name="nightly", endpoint_name="be1", model=ModelRef(registered="m:1")
    )

    def with_settings(**changes: object) -> BatchDeploymentSpec:
        return spec.model_copy(update={"settings": spec.settings.model_copy(update=changes)})

    domain.check_batch_deployment(with_settings(logging_level="DEBUG"))
    with pytest.raises(InvalidArgument, match="logging_level must be one of debug, info"):
        domain.check_batch_deployment(with_settings(logging_level="verbose"))
    with pytest.raises(InvalidArgument, match="output_file_name must be a plain file name"):
        domain.check_batch_deployment(with_settings(output_file_name=".."))
