"""The management REST API (Envoy's gRPC-JSON transcoder in front of our services) on the
local platform: CRUD as curl would do it, auth, errors as JSON, and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from openapi_spec_validator import validate

from sluice.common.platform import PlatformState
from sluice.common.protoconv import to_proto
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment
from sluice.testing.rest import Rest, rest_of
from sluice.testing.wait import wait_for
from sluice.traffic.openapi import document
from sluice.v1 import registry_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
def rest(local_platform: PlatformState) -> Rest:
    return rest_of(local_platform)


def deployment_body(platform: PlatformState, examples: Path, endpoint: str) -> dict[str, Any]:
    """The blue example's spec as REST JSON; its folders uploaded first, as `az` uploads to
    blob storage before it PUTs a deployment (UploadArtifact is a client stream: gRPC only)."""
    assert platform.registry_address
    client = RegistryClient(
        platform.registry_address, (platform.state_dir / "admin-token").read_text().strip()
    )
    try:
        loaded = load_online_deployment(
            examples / "online" / "blue-deployment.yml", client.upload, endpoint_name=endpoint
        )
    finally:
        client.close()
    return json_format.MessageToDict(to_proto(loaded.spec, registry_pb2.OnlineDeploymentSpec()))


def test_endpoint_and_deployment_crud(
    rest: Rest, local_platform: PlatformState, trained_examples: Path, test_id: str
) -> None:
    name = f"rest-{test_id}"
    status, created = rest.call("PUT", f"/onlineEndpoints/{name}", {"name": name})
    assert status == 200, created
    assert created["spec"]["authMode"] == "AUTH_MODE_KEY"
    assert created["scoringUri"].endswith(f"/endpoints/{name}/score")

    status, listed = rest.call("GET", "/onlineEndpoints?page.pageSize=1000")
    assert status == 200 and name in [e["spec"]["name"] for e in listed["endpoints"]]

    status, patched = rest.call(
        "PATCH",
        f"/onlineEndpoints/{name}",
        {"spec": {"name": name, "description": "from REST"}, "expectedVersion": "1"},
    )
    assert status == 200, patched
    assert patched["spec"]["description"] == "from REST" and patched["meta"]["version"] == "2"

    status, keys = rest.call("POST", f"/onlineEndpoints/{name}/listKeys")
    assert status == 200 and keys["primaryKey"] and keys["secondaryKey"]
    status, _ = rest.call(
        "POST", f"/onlineEndpoints/{name}/regenerateKeys", {"keyType": "KEY_TYPE_PRIMARY"}
    )
    assert status == 200
    assert (
        rest.call("POST", f"/onlineEndpoints/{name}/listKeys")[1]["primaryKey"]
        != keys["primaryKey"]
    )

    body = deployment_body(local_platform, trained_examples, name)
    status, dep = rest.call("PUT", f"/onlineEndpoints/{name}/deployments/blue", body)
    assert status == 200, dep
    assert dep["spec"]["instanceCount"] == 1

    def succeeded() -> dict[str, Any] | None:
        got = rest.call("GET", f"/onlineEndpoints/{name}/deployments/blue")[1]
        state = got["meta"]["provisioningState"]
        assert state != "PROVISIONING_STATE_FAILED", got["meta"]["statusMessage"]
        return got if state == "PROVISIONING_STATE_SUCCEEDED" else None

    ready = wait_for(succeeded, "the deployment created over REST succeeds", deadline=240)
    assert ready["instances"] and ready["instances"][0]["ready"]

    status, ep = rest.call(
        "POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 100}}
    )
    assert status == 200 and ep["spec"]["traffic"] == {"blue": 100}

    status, logs = rest.call(
        "POST", f"/onlineEndpoints/{name}/deployments/blue/getLogs", {"lines": 20}
    )
    assert status == 200 and logs["text"], logs

    status, listed = rest.call("GET", f"/onlineEndpoints/{name}/deployments")
    assert status == 200 and [d["spec"]["name"] for d in listed["deployments"]] == ["blue"]

    status, _ = rest.call("POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 0}})
    assert status == 200
    status, _ = rest.call("DELETE", f"/onlineEndpoints/{name}/deployments/blue")
    assert status == 200
    status, _ = rest.call("DELETE", f"/onlineEndpoints/{name}")
    assert status == 200
    status, gone = rest.call("GET", f"/onlineEndpoints/{name}")
    assert status == 404 and gone["code"] == 5


def test_errors_are_json_with_http_statuses(rest: Rest, test_id: str) -> None:
    name = f"rest-err-{test_id}"
    status, body = rest.call("GET", "/onlineEndpoints", auth=False)
    assert status == 401 and body["code"] == 16 and "admin token" in body["message"]
    status, body = rest.call("GET", "/onlineEndpoints", auth="not-the-token")
    assert status == 401 and body["code"] == 16

    status, body = rest.call("GET", f"/onlineEndpoints/{name}")
    assert status == 404 and body["code"] == 5 and name in body["message"]

    assert rest.call("PUT", f"/onlineEndpoints/{name}", {"name": name})[0] == 200
    status, body = rest.call("PUT", f"/onlineEndpoints/{name}", {"name": name})
    assert status == 409 and body["code"] == 6

    stale = {"spec": {"name": name, "description": "late"}, "expectedVersion": "7"}
    status, body = rest.call("PATCH", f"/onlineEndpoints/{name}", stale)
    assert status == 412 and body["code"] == 10
    assert rest.call("GET", f"/onlineEndpoints/{name}")[1]["spec"]["description"] == ""

    status, body = rest.call("POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"x": 5}})
    assert status == 400 and body["code"] == 3

    # A body the transcoder cannot read: Envoy's own 400, as the same JSON shape.
    status, body = rest.call("PUT", f"/onlineEndpoints/{name}", {"authMode": "NOT_A_MODE"})
    assert status == 400 and body["code"] == 3 and "NOT_A_MODE" in body["message"]

    status, body = rest.call("GET", "/noSuchThing")
    assert status == 404 and body["code"] == 5
    assert rest.call("DELETE", f"/onlineEndpoints/{name}")[0] == 200


def test_openapi_document_is_served_and_valid(rest: Rest) -> None:
    status, served = rest.call("GET", "/openapi.json", auth=False)
    assert status == 200
    validate(served)
    assert served == document()
    ops = served["paths"]["/onlineEndpoints/{name}"]
    assert set(ops) == {"get", "put", "patch", "delete"}
    assert "/onlineEndpoints/{endpointName}/deployments/{deploymentName}/getLogs" in served["paths"]
    assert "/jobs/{name}" in served["paths"] and "/batchEndpoints/{name}" in served["paths"]
    endpoint = served["components"]["schemas"]["OnlineEndpointSpec"]["properties"]
    assert endpoint["authMode"]["enum"][1] == "AUTH_MODE_KEY"


def test_every_service_answers_over_rest(rest: Rest, test_id: str) -> None:
    """Routed to the right process: assets (registry), jobs (batch), costs and autoscale
    settings (metrics), each reading real state."""
    status, assets = rest.call("GET", "/assets/model")
    assert status == 200 and "assets" in assets
    status, jobs = rest.call("GET", "/jobs")
    assert status == 200 and "jobs" in jobs
    status, costs = rest.call("GET", "/costs")
    assert status == 200 and costs["currency"] == "USD"
    status, settings = rest.call("GET", "/autoscaleSettings")
    assert status == 200 and "settings" in settings
    status, missing = rest.call("GET", f"/jobs/no-such-job-{test_id}")
    assert status == 404 and missing["code"] == 5
