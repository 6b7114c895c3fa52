"""Stored resources <-> Azure's REST shape: what a GET answers PUTs back unchanged, Azure's
spellings, and bad values refused with a message that names them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import json_format

from sluice.common.assets import AssetDoc, AssetKind, AssetSpec
from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    BatchEndpointDoc,
    BatchEndpointSpec,
    CodeConfiguration,
    ComputeKind,
    DataCollection,
    DataCollector,
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
    RequestSettings,
    ResourceRequirements,
    ScaleSettings,
)
from sluice.registry import arm, arm_assets
from sluice.registry.domain import InvalidArgument
from sluice.v1 import workspace_pb2 as ws

BASE = "https://localhost:8443/endpoints/{name}"
MODEL = ArtifactRef(digest="sha256:" + "a" * 64, name="model", is_directory=True)
CODE = ArtifactRef(digest="sha256:" + "b" * 64, name="onlinescoring", is_directory=True)


def _json(message: ws.OnlineDeploymentTrackedResource) -> dict[str, object]:
    return json_format.MessageToDict(message)


def test_online_endpoint_in_azures_shape_and_back() -> None:
    spec = OnlineEndpointSpec(
        name="ep1", description="d", tags={"t": "1"}, auth_mode=AuthMode.aml_token
    )
    doc = OnlineEndpointDoc(spec=spec, meta=Meta(version=3, created_by="ann"))
    out = _json(arm.online_endpoint(doc, BASE, applied_version=2))
    assert out["kind"] == "Managed" and out["etag"] == "3"
    props = out["properties"]
    assert isinstance(props, dict)
    assert props["authMode"] == "AMLToken" and props["provisioningState"] == "Creating"
    assert props["scoringUri"] == "https://localhost:8443/endpoints/ep1/score"
    assert props["appliedEtag"] == "2"
    # The answer always names the split, so a GET's answer PUT back sets the same one.
    assert props["traffic"] == {} and props["mirrorTraffic"] == {}
    back, traffic, mirror = arm.online_endpoint_spec("ep1", arm.online_endpoint(doc, BASE))
    assert back == spec and traffic == {} and mirror == {}


def _endpoint_put(body: dict[str, object]) -> ws.OnlineEndpointTrackedResource:
    return json_format.ParseDict(body, ws.OnlineEndpointTrackedResource())


def test_a_put_that_names_an_empty_split_sets_it_and_one_without_keeps_it() -> None:
    """`"traffic": {}` is an empty split (no live traffic), as Azure's PUT (azure-ai-ml sends
    it whenever the endpoint object has no traffic); a body without it keeps the split."""
    _, traffic, mirror = arm.online_endpoint_spec(
        "ep1", _endpoint_put({"properties": {"traffic": {}, "mirrorTraffic": {}}})
    )
    assert traffic == {} and mirror == {}
    _, traffic, mirror = arm.online_endpoint_spec("ep1", _endpoint_put({"properties": {}}))
    assert traffic is None and mirror is None
    _, traffic, mirror = arm.online_endpoint_spec(
        "ep1", _endpoint_put({"properties": {"traffic": {"blue": 90, "green": "10"}}})
    )
    assert traffic == {"blue": 90, "green": 10} and mirror is None
    # Answers print whole numbers (Envoy prints a Struct's 90.0 as 90).
    spec = OnlineEndpointSpec(name="ep1", traffic={"blue": 90, "green": 10})
    out = arm.online_endpoint(OnlineEndpointDoc(spec=spec, meta=Meta()), BASE)
    assert dict(out.properties.traffic) == {"blue": 90, "green": 10}


@pytest.mark.parametrize("share", [50.5, "half", None, True, [50], {"a": 1}])
def test_a_share_that_is_not_a_whole_percent_is_refused(share: object) -> None:
    body = {"properties": {"mirrorTraffic": {"blue": share}}}
    with pytest.raises(InvalidArgument, match=r"mirrorTraffic\.blue must be a whole percent"):
        arm.online_endpoint_spec("ep1", _endpoint_put(body))


def test_online_deployment_round_trips() -> None:
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="ep1",
        tags={"a": "b"},
        kind=ComputeKind.kubernetes,
        model=ModelRef(artifact=MODEL),
        code_configuration=CodeConfiguration(code=CODE, scoring_script="score.py"),
        environment=EnvironmentSpec(conda_file="name: x\n", image="python:3.12"),
        instance_count=3,
        environment_variables={"K": "V"},
        request_settings=RequestSettings(request_timeout_ms=1500, max_queue_wait_ms=250),
        liveness_probe=Probe(initial_delay_s=5, failure_threshold=3),
        scale_settings=ScaleSettings(
            type="target_utilization", min_instances=0, max_instances=4, polling_interval_s=2
        ),
        resources=ResourceRequirements(requests={"cpu": "1"}, limits={"memory": "2Gi"}),
        data_collector=DataCollector(
            collections={"model_inputs": DataCollection(enabled=True)}, sampling_rate=0.5
        ),
        egress_public_network_access="disabled",
    )
    doc = OnlineDeployment(spec=spec, meta=Meta(provisioning_state=ProvisioningState.succeeded))
    resource = arm.online_deployment(doc)
    out = _json(resource)
    props = out["properties"]
    assert isinstance(props, dict)
    assert out["sku"] == {"name": "Default", "capacity": 3}
    assert props["model"] == f"azureml://artifacts/{MODEL.digest}/model/"
    assert props["requestSettings"]["requestTimeout"] == "PT1.5S"
    assert props["scaleSettings"]["scaleType"] == "TargetUtilization"
    assert props["endpointComputeType"] == "Kubernetes"
    assert props["provisioningState"] == "Succeeded"
    assert props["dataCollector"]["collections"]["model_inputs"]["dataCollectionMode"] == "Enabled"
    assert props["egressPublicNetworkAccess"] == "Disabled"  # ARM's casing
    parsed = json_format.ParseDict(out, ws.OnlineDeploymentTrackedResource())
    assert arm.online_deployment_spec("ep1", "blue", parsed) == spec


def test_registered_model_and_environment_are_references() -> None:
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="ep1",
        model=ModelRef(artifact=MODEL, asset="m:1"),
        environment=EnvironmentSpec(registered="env:2", image="x"),
    )
    props = arm.online_deployment(OnlineDeployment(spec=spec, meta=Meta())).properties
    assert props.model == "azureml:m:1" and props.environment_id == "azureml:env:2"
    assert not props.HasField("environment")
    back = arm.online_deployment_spec(
        "ep1", "blue", ws.OnlineDeploymentTrackedResource(properties=props)
    )
    assert back.model.registered == "azureml:m:1"
    assert back.environment.registered == "azureml:env:2"


def test_batch_resources_round_trip() -> None:
    endpoint = BatchEndpointSpec(name="be1", default_deployment="d1")
    out = arm.batch_endpoint(BatchEndpointDoc(spec=endpoint, meta=Meta()), BASE)
    assert out.properties.defaults.deployment_name == "d1"
    assert arm.batch_endpoint_spec("be1", out) == endpoint
    spec = BatchDeploymentSpec(
        name="d1",
        endpoint_name="be1",
        model=ModelRef(artifact=MODEL),
        compute="cpu",
        instance_count=2,
    )
    spec = spec.model_copy(
        update={
            "settings": spec.settings.model_copy(
                update={"output_action": OutputAction.summary_only, "error_threshold": 0}
            )
        }
    )
    resource = arm.batch_deployment(BatchDeploymentDoc(spec=spec, meta=Meta()))
    assert json_format.MessageToDict(resource)["properties"]["outputAction"] == "SummaryOnly"
    assert arm.batch_deployment_spec("be1", "d1", resource) == spec


@pytest.mark.parametrize(
    ("text", "seconds"), [("PT10S", 10), ("PT0.5S", 0.5), ("PT1M30S", 90), ("P1DT1H", 90000)]
)
def test_iso_durations(text: str, seconds: float) -> None:
    assert arm.parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["10s", "PT", "P", "PT-1S", "1 minute"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"livenessProbe\.period .* ISO 8601"):
        arm.parse_duration(text, "livenessProbe.period")


def test_bad_values_are_refused_with_their_name() -> None:
    resource = ws.OnlineDeploymentTrackedResource()
    resource.properties.model = "azureml://artifacts/md5:x/model"
    with pytest.raises(InvalidArgument, match=r"model .* is not an uploaded artifact"):
        arm.online_deployment_spec("ep1", "blue", resource)
    resource = ws.OnlineDeploymentTrackedResource()
    resource.properties.scale_settings.scale_type = "Fast"
    with pytest.raises(InvalidArgument, match="scaleType 'Fast'"):
        arm.online_deployment_spec("ep1", "blue", resource)
    resource = ws.OnlineDeploymentTrackedResource()
    resource.properties.data_collector.collections["request"].data_collection_mode = "Maybe"
    with pytest.raises(InvalidArgument, match="Enabled or Disabled"):
        arm.online_deployment_spec("ep1", "blue", resource)
    with pytest.raises(InvalidArgument, match="must match"):
        arm.online_deployment_spec("ep1", "blue", ws.OnlineDeploymentTrackedResource(name="green"))


@pytest.mark.parametrize(("header", "version"), [('"3"', 3), ('W/"3"', 3), ("3", 3), ("*", None)])
def test_if_match(header: str, version: int | None) -> None:
    assert arm.parse_etag(header) == version


def test_asset_container_is_read_from_its_versions() -> None:
    def doc(version: str, archived: bool) -> AssetDoc:
        spec = AssetSpec(asset_kind=AssetKind.data, name="rows", version=version,
                         type="uri_folder", path="https://example.com/rows/")  # fmt: skip
        return AssetDoc(spec=spec, meta=Meta(created_by="ann"), archived=archived)

    box = arm_assets.container(AssetKind.data, [doc("1", False), doc("2", False), doc("x", True)])
    props = box.properties
    assert props.latest_version == "2" and props.next_version == "3"
    assert props.data_type == "uri_folder" and not props.is_archived
    assert box.id.endswith("/workspaces/sluice/data/rows") and box.name == "rows"
    gone = arm_assets.container(AssetKind.data, [doc("1", True)])
    assert gone.properties.is_archived and gone.properties.latest_version == "1"
    with pytest.raises(InvalidArgument, match="listViewType"):
        arm_assets.list_view("Everything")


def test_version_lists_are_newest_first() -> None:
    """REST's `GET /models/{n}/versions` lists the most recently created version first (the
    `[0]` idiom of Azure scripts); the version breaks a tie of the clock."""
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def doc(version: str, seconds: int) -> AssetDoc:
        spec = AssetSpec(asset_kind=AssetKind.data, name="rows", version=version,
                         type="uri_folder", path="https://example.com/rows/")  # fmt: skip
        return AssetDoc(spec=spec, meta=Meta(created_at=at + timedelta(seconds=seconds)))

    docs = [doc("1", 0), doc("10", 1), doc("9", 2), doc("2", 2)]
    assert [d.spec.version for d in arm_assets.sort_versions(docs)] == ["9", "2", "10", "1"]
