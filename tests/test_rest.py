"""The management REST API (Envoy's gRPC-JSON transcoder in front of our services) on the
local platform: Azure's resource shape, PUT as create-or-replace with If-Match, auth,
errors as JSON, and the OpenAPI document - called as curl would call it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from openapi_spec_validator import validate

from sluice.common.artifacts import pack
from sluice.common.platform import PlatformState
from sluice.common.resources import Meta, OnlineDeployment
from sluice.registry import arm
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment
from sluice.testing.rest import Rest, rest_of
from sluice.testing.wait import wait_for
from sluice.traffic.openapi import document

pytestmark = pytest.mark.integration
WORKSPACE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sluice/"
    "providers/Microsoft.MachineLearningServices/workspaces/sluice"
)


@pytest.fixture
def rest(local_platform: PlatformState) -> Rest:
    return rest_of(local_platform)


def deployment_body(platform: PlatformState, examples: Path, endpoint: str) -> dict[str, Any]:
    """The blue example as the JSON body of a PUT, in Azure's shape; its folders uploaded
    first (by the SDK's gRPC stream; test_assets_in_azures_shape uploads over REST), as
    `az` uploads to blob storage before it PUTs a deployment."""
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
    resource = arm.online_deployment(OnlineDeployment(spec=loaded.spec, meta=Meta()))
    body = json_format.MessageToDict(resource)
    return {"sku": body["sku"], "properties": body["properties"]}


def test_endpoint_and_deployment_crud(
    rest: Rest, local_platform: PlatformState, trained_examples: Path, test_id: str
) -> None:
    name = f"rest-{test_id}"
    created = rest.send("PUT", f"/onlineEndpoints/{name}", {"tags": {"team": "a"}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == f"{WORKSPACE}/onlineEndpoints/{name}"
    assert body["type"] == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    assert body["name"] == name and body["tags"] == {"team": "a"}
    props = body["properties"]
    assert props["authMode"] == "Key" and props["provisioningState"] == "Succeeded"
    assert props["scoringUri"].endswith(f"/endpoints/{name}/score")
    assert body["systemData"]["createdAt"] and created.headers["etag"] == '"1"'

    status, listed = rest.call("GET", "/onlineEndpoints?count=1000")
    assert status == 200 and name in [e["name"] for e in listed["value"]]
    # A call copied from Azure's REST docs carries ?api-version= (and maybe $orderBy): ignored.
    status, got = rest.call("GET", f"/onlineEndpoints/{name}?api-version=2024-04-01")
    assert status == 200 and got["name"] == name, got
    status, listed = rest.call("GET", "/onlineEndpoints?api-version=2024-04-01&$orderBy=name")
    assert status == 200 and name in [e["name"] for e in listed["value"]], listed

    # PUT on an existing resource replaces it: 200, the next ETag, tags gone.
    replaced = rest.send(
        "PUT",
        f"/onlineEndpoints/{name}",
        {"properties": {"description": "from REST", "authMode": "Key"}},
        headers={"If-Match": '"1"'},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.headers["etag"] == '"2"' and replaced.json()["etag"] == "2"
    assert replaced.json()["properties"]["description"] == "from REST"
    assert replaced.json()["tags"] == {}

    status, keys = rest.call("POST", f"/onlineEndpoints/{name}/listKeys")
    assert status == 200 and keys["primaryKey"] and keys["secondaryKey"]
    status, _ = rest.call("POST", f"/onlineEndpoints/{name}/regenerateKeys", {"keyType": "Primary"})
    assert status == 200
    again = rest.call("POST", f"/onlineEndpoints/{name}/listKeys")[1]
    assert again["primaryKey"] != keys["primaryKey"]
    assert again["secondaryKey"] == keys["secondaryKey"]

    body = deployment_body(local_platform, trained_examples, name)
    made = rest.send("PUT", f"/onlineEndpoints/{name}/deployments/blue", body)
    assert made.status_code == 201, made.text
    dep = made.json()
    # As Azure's, the answer names the operation to poll, an absolute URI (deploy-rest.sh
    # curls it until its status is Succeeded or Failed).
    operation = made.headers["azure-asyncoperation"]
    assert dep["properties"]["properties"]["AzureAsyncOperationUri"] == operation
    assert operation.startswith(f"{rest.base}/subscriptions/"), operation
    assert f"/locations/local/mfeOperationsStatus/od:{name}:blue:" in operation
    auth = {"authorization": f"Bearer {rest.admin_token}"}

    def finished() -> dict[str, Any] | None:
        got = httpx.get(operation, headers=auth, timeout=30).json()
        assert got["status"] in ("InProgress", "Succeeded"), got
        return got if got["status"] != "InProgress" else None

    done = wait_for(finished, "the deployment's operation to finish", 240)
    assert done["name"] == operation.rpartition("/")[2] and "error" not in done, done
    assert operation.endswith(done["id"]), done
    assert dep["sku"] == {"name": "Default", "capacity": 1}
    assert dep["properties"]["model"].startswith("azureml://artifacts/sha256:")
    assert dep["properties"]["livenessProbe"]["initialDelay"] == "PT10S"

    def succeeded(deployment: str) -> dict[str, Any] | None:
        got = rest.call("GET", f"/onlineEndpoints/{name}/deployments/{deployment}")[1]
        state = got["properties"]["provisioningState"]
        assert state != "Failed", got["properties"]["statusMessage"]
        return got if state == "Succeeded" else None

    ready = wait_for(lambda: succeeded("blue"), "the deployment made over REST runs", 240)
    assert ready["properties"]["instances"][0]["ready"]
    assert ready["properties"]["endpointComputeType"] == "Managed"

    # Azure Monitor's metrics API, at the endpoint's and at a deployment's scope.
    monitor = f"/onlineEndpoints/{name}/providers/Microsoft.Insights/metrics"
    status, metrics = rest.call(
        "GET", f"{monitor}?metricnames=RequestsPerMinute,RequestLatency_P99"
    )
    assert status == 200, metrics
    assert metrics["interval"] == "PT1M" and metrics["namespace"].endswith("/onlineEndpoints")
    assert [m["name"]["value"] for m in metrics["value"]] == [
        "RequestsPerMinute",
        "RequestLatency_P99",
    ]
    assert len(metrics["value"][0]["timeseries"][0]["data"]) >= 60  # every minute of the hour
    status, error = rest.call("GET", f"{monitor}?metricnames=CpuUtilizationPercentage")
    assert status == 400 and "deployments/{deployment}/providers" in error["message"]
    status, error = rest.call("GET", f"{monitor}?$filter=instance eq 'x'")
    assert status == 400 and "$filter" in error["message"]
    status, split = rest.call("GET", f"{monitor}?$filter=statusCodeClass eq '*'")
    assert status == 200 and split["value"][0]["name"]["value"] == "RequestsPerMinute", split
    # Azure Monitor's autoscale setting resource (disabled: it must not scale blue here).
    scale = f"/autoscaleSettings/{name}-blue"
    target = f"{WORKSPACE}/onlineEndpoints/{name}/deployments/blue"
    rule = {
        "metricTrigger": {"metricName": "CpuUtilizationPercentage", "operator": "GreaterThan",
                          "threshold": 90, "timeWindow": "PT5M", "timeAggregation": "Average"},
        "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1"},
    }  # fmt: skip
    setting = {
        "properties": {
            "enabled": False,
            "targetResourceUri": target,
            "profiles": [
                {"name": "default", "capacity": {"minimum": "1", "maximum": "2", "default": "1"},
                 "rules": [rule]},
            ],
        }
    }  # fmt: skip
    made = rest.send("PUT", scale, setting)
    assert made.status_code == 201 and made.headers["etag"] == '"1"', made.text
    got = made.json()
    assert got["type"] == "Microsoft.Insights/autoscaleSettings" and got["name"] == f"{name}-blue"
    trigger = got["properties"]["profiles"][0]["rules"][0]["metricTrigger"]
    assert trigger["metricResourceUri"] == target and trigger["timeGrain"] == "PT1M"
    again = rest.send("PUT", scale, got, headers={"If-Match": '"1"'})  # a GET's answer back
    assert again.status_code == 200 and again.headers["etag"] == '"2"', again.text
    status, error = rest.call("PUT", scale, got, headers={"If-Match": '"1"'})
    assert status == 412 and error["code"] == 10
    bad = {"properties": {**setting["properties"], "profiles": [
        {"name": "default", "rules": [{**rule, "scaleAction": {"type": "Double"}}]}]}}  # fmt: skip
    status, error = rest.call("PUT", scale, bad)
    assert status == 400 and "profiles[0].rules[0].scaleAction" in error["message"]
    assert rest.send("GET", scale).headers["etag"] == '"2"'
    assert rest.call("DELETE", scale)[0] == 200

    status, metrics = rest.call(
        "GET", f"/onlineEndpoints/{name}/deployments/blue/providers/Microsoft.Insights/metrics"
        "?metricnames=CpuUtilizationPercentage,DeploymentCapacity&interval=PT5M&timespan=PT1H"
    )  # fmt: skip
    assert status == 200 and metrics["interval"] == "PT5M", metrics
    assert [m["unit"] for m in metrics["value"]] == ["Percent", "Count"]

    status, ep = rest.call(
        "POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 100}}
    )
    assert status == 200 and ep["properties"]["traffic"] == {"blue": 100}
    # A PUT's traffic is the whole split (merged, blue=100 + green=100 would be refused).
    # green only has to exist (shares name deployments, ready or not): made, used, deleted.
    green = rest.send("PUT", f"/onlineEndpoints/{name}/deployments/green", body)
    assert green.status_code == 201, green.text
    whole = {"properties": {"authMode": "Key", "traffic": {"green": 100}}}
    status, ep = rest.call("PUT", f"/onlineEndpoints/{name}", whole)
    assert status == 200 and ep["properties"]["traffic"] == {"green": 100}, ep
    status, ep = rest.call(
        "POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 100, "green": 0}}
    )
    assert status == 200 and ep["properties"]["traffic"] == {"blue": 100}
    assert rest.call("DELETE", f"/onlineEndpoints/{name}/deployments/green")[0] == 200
    # `{}` names an empty split: no live traffic (as Azure's PUT, which azure-ai-ml sends
    # whenever its endpoint object has no traffic); a body without `traffic` keeps it.
    none = {"properties": {"authMode": "Key", "traffic": {}}}
    status, ep = rest.call("PUT", f"/onlineEndpoints/{name}", none)
    assert status == 200 and ep["properties"]["traffic"] == {}, ep
    status, _ = rest.call("POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 100}})
    assert status == 200
    status, ep = rest.call("PUT", f"/onlineEndpoints/{name}", {"properties": {"authMode": "Key"}})
    assert status == 200 and ep["properties"]["traffic"] == {"blue": 100}, ep
    status, error = rest.call(
        "PUT", f"/onlineEndpoints/{name}", {"properties": {"traffic": {"blue": 99.5}}}
    )
    assert status == 400 and "traffic.blue must be a whole percent" in error["message"], error

    status, logs = rest.call(
        "POST", f"/onlineEndpoints/{name}/deployments/blue/getLogs", {"tail": 20}
    )
    assert status == 200 and logs["content"] and logs["instanceId"], logs
    status, logs = rest.call(
        "POST",
        f"/onlineEndpoints/{name}/deployments/blue/getLogs",
        {"containerType": "StorageInitializer"},
    )
    assert status == 200 and logs["content"], logs
    status, error = rest.call(
        "POST", f"/onlineEndpoints/{name}/deployments/blue/getLogs", {"containerType": "Kernel"}
    )
    assert status == 400 and "InferenceServer or StorageInitializer" in error["message"]

    status, listed = rest.call("GET", f"/onlineEndpoints/{name}/deployments")
    assert status == 200 and "blue" in [d["name"] for d in listed["value"]]

    # Bad input to an existing deployment: 400 saying what is wrong, nothing changed.
    bad = {
        **body,
        "properties": {**body["properties"], "requestSettings": {"requestTimeout": "5s"}},
    }
    status, error = rest.call("PUT", f"/onlineEndpoints/{name}/deployments/blue", bad)
    assert status == 400 and "ISO 8601" in error["message"] and "requestTimeout" in error["message"]
    path = f"/onlineEndpoints/{name}/deployments/blue"
    status, error = rest.call("PATCH", path, {"sku": {"capacity": 0}})
    assert status == 400 and "sku.capacity" in error["message"]
    status, error = rest.call("PATCH", path, {"tags": {"a": "b"}}, headers={"If-Match": '"99"'})
    assert status == 412
    after = rest.call("GET", path)[1]
    assert after["etag"] == ready["etag"] and after["sku"]["capacity"] == 1

    status, _ = rest.call("POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"blue": 0}})
    assert status == 200
    status, _ = rest.call("DELETE", f"/onlineEndpoints/{name}/deployments/blue")
    assert status == 200
    status, _ = rest.call("DELETE", f"/onlineEndpoints/{name}")
    assert status == 200
    status, gone = rest.call("GET", f"/onlineEndpoints/{name}")
    assert status == 404 and gone["code"] == 5


def test_azure_resource_manager_paths_name_the_same_resources(rest: Rest, test_id: str) -> None:
    """A call copied from Azure's REST docs keeps its ARM path (azureml-examples'
    deploy-rest.sh: `/subscriptions/<s>/resourceGroups/<rg>/providers/
    Microsoft.MachineLearningServices/workspaces/<w>/onlineEndpoints/<e>`, whatever the
    subscription, group and workspace, in any case), and a resource's `id` is a path the
    API answers; other paths that start alike are not rewritten."""
    name = f"arm-{test_id}"
    scope = "/subscriptions/1234/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
    scope += "/workspaces/ws"
    made = rest.send("PUT", f"{scope}/onlineEndpoints/{name}?api-version=2022-05-01", {})
    assert made.status_code == 201, made.text
    endpoint_id = made.json()["id"]
    assert endpoint_id == f"{WORKSPACE}/onlineEndpoints/{name}"
    status, got = rest.call("GET", f"{endpoint_id}?api-version=2022-05-01")
    assert status == 200 and got["name"] == name, got
    lower = "/SUBSCRIPTIONS/x/resourcegroups/rg/providers/microsoft.machinelearningservices/"
    status, keys = rest.call("POST", f"{lower}workspaces/ws/onlineEndpoints/{name}/listKeys")
    assert status == 200 and keys["primaryKey"], keys
    status, error = rest.call("GET", f"/subscriptions/1234/onlineEndpoints/{name}")
    assert status == 404 and "no such REST path" in error["message"], error
    status, _ = rest.call("DELETE", endpoint_id)
    assert status == 200
    assert rest.call("GET", f"/onlineEndpoints/{name}")[0] == 404


def test_a_failed_deployment_s_operation_says_why_and_a_deleted_one_s_is_gone(
    rest: Rest, local_platform: PlatformState, trained_examples: Path, tmp_path: Path, test_id: str
) -> None:
    """Azure's operation status: an endpoint's is Succeeded at once; a deployment whose
    init() raises ends Failed with the reason; ids that are not an operation's are refused
    saying so; a deleted resource's operation is not found (nor is it its namesake's)."""
    name = f"ops-{test_id}"
    made = rest.send("PUT", f"/onlineEndpoints/{name}", {})
    assert made.status_code == 201, made.text
    operation = made.headers["azure-asyncoperation"]
    path = operation.removeprefix(rest.base)
    status, got = rest.call("GET", path)
    assert status == 200 and got["status"] == "Succeeded" and got["name"].startswith("oe:"), got
    status, got = rest.call("GET", "/locations/" + path.split("/locations/", 1)[1])
    assert status == 200 and got["status"] == "Succeeded", got  # without the ARM prefix too

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "def init():\n    raise RuntimeError('no model here: ops test')\n\n"
        "def run(data):\n    return data\n"
    )
    assert local_platform.registry_address
    with RegistryClient(local_platform.registry_address, rest.admin_token) as client:
        code_id = arm.artifact_uri(client.upload(code))
    body = deployment_body(local_platform, trained_examples, name)
    body["properties"]["codeConfiguration"]["codeId"] = code_id
    made = rest.send("PUT", f"/onlineEndpoints/{name}/deployments/broken", body)
    assert made.status_code == 201, made.text
    path = made.headers["azure-asyncoperation"].removeprefix(rest.base)

    def finished() -> dict[str, Any] | None:
        got = rest.call("GET", path)[1]
        return got if got["status"] != "InProgress" else None

    failed = wait_for(finished, "the broken deployment's operation to finish", 240)
    assert failed["status"] == "Failed", failed
    assert failed["error"]["code"] == "ResourceOperationFailure"
    assert "no model here: ops test" in failed["error"]["message"], failed

    op_id = path.rpartition("/")[2]
    for bad, code_, says in [
        ("od:nope", 400, "not an operation id"),
        (f"oe:{name}:blue:1", 400, "not an operation id"),  # an endpoint's has no deployment
        (op_id.replace(":broken:", ":ghost:"), 404, "ghost"),
        (op_id[:-1] + ("1" if op_id[-1] != "1" else "2"), 404, "no longer exists"),
    ]:
        status, error = rest.call("GET", path.replace(op_id, bad))
        assert status == code_ and says in error["message"], (bad, error)
    status, error = rest.call("GET", path.replace("/locations/local/", "/locations/eastus/"))
    assert status == 404 and "'local'" in error["message"], error

    assert rest.call("DELETE", f"/onlineEndpoints/{name}/deployments/broken")[0] == 200
    gone = wait_for(lambda: rest.call("GET", path)[0] == 404 or None, "the operation to go", 60)
    assert gone
    assert rest.call("DELETE", f"/onlineEndpoints/{name}")[0] == 200


def test_errors_are_json_and_leave_state_unchanged(rest: Rest, test_id: str) -> None:
    name = f"rest-err-{test_id}"
    status, body = rest.call("GET", "/onlineEndpoints", auth=False)
    assert status == 401 and body["code"] == 16 and "admin token" in body["message"]
    status, body = rest.call("GET", "/onlineEndpoints", auth="not-the-token")
    assert status == 401 and body["code"] == 16

    status, body = rest.call("GET", f"/onlineEndpoints/{name}")
    assert status == 404 and body["code"] == 5 and name in body["message"]

    # If-Match on a resource that does not exist: 412, nothing created.
    status, body = rest.call("PUT", f"/onlineEndpoints/{name}", {}, headers={"If-Match": '"1"'})
    assert status == 412 and "does not exist" in body["message"]
    assert rest.call("GET", f"/onlineEndpoints/{name}")[0] == 404

    assert rest.call("PUT", f"/onlineEndpoints/{name}", {"tags": {"v": "1"}})[0] == 201
    original = rest.call("GET", f"/onlineEndpoints/{name}")[1]

    stale = {"properties": {"description": "late"}}
    status, body = rest.call("PUT", f"/onlineEndpoints/{name}", stale, headers={"If-Match": '"7"'})
    assert status == 412 and body["code"] == 10

    # Each bad body: 400 with a message that names the problem.
    cases: list[tuple[dict[str, Any], str]] = [
        ({"properties": {"authMode": "NOT_A_MODE"}}, "NOT_A_MODE"),  # the transcoder's own
        ({"name": "other"}, "must match"),
        ({"kind": "Kubernetes", "properties": {"compute": "k8s"}}, "kind cannot change"),
        ({"kind": "Serverless"}, "Managed or Kubernetes"),
        ({"properties": {"traffic": {"ghost": 100}}}, "ghost"),
    ]
    for bad, says in cases:
        status, body = rest.call("PUT", f"/onlineEndpoints/{name}", bad)
        assert status == 400 and body["code"] == 3, (bad, body)
        assert says in body["message"], (bad, body)
    status, body = rest.call("PUT", f"/onlineEndpoints/{name}", {}, headers={"If-Match": "x"})
    assert status == 400 and "If-Match" in body["message"]
    status, body = rest.call("POST", f"/onlineEndpoints/{name}/setTraffic", {"traffic": {"x": 5}})
    assert status == 400 and body["code"] == 3
    status, body = rest.call("POST", f"/onlineEndpoints/{name}/regenerateKeys", {"keyType": "x"})
    assert status == 400 and "Primary or Secondary" in body["message"]
    status, body = rest.call("PATCH", f"/onlineEndpoints/{name}", {"sku": {"capacity": 2}})
    assert status == 400 and "no sku" in body["message"]
    status, body = rest.call(
        "PATCH", f"/onlineEndpoints/{name}", {"tags": {"v": "2"}}, headers={"If-Match": '"9"'}
    )
    assert status == 412 and body["code"] == 10
    after = rest.call("GET", f"/onlineEndpoints/{name}")[1]
    assert after["etag"] == original["etag"] and after["tags"] == {"v": "1"}

    # PATCH changes the tags only.
    etag = f'"{original["etag"]}"'
    patched = rest.send(
        "PATCH", f"/onlineEndpoints/{name}", {"tags": {"v": "2"}}, headers={"If-Match": etag}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == {"v": "2"}
    assert patched.json()["etag"] == str(int(original["etag"]) + 1)
    assert patched.json()["properties"]["authMode"] == original["properties"]["authMode"]
    # `tags` present replaces the whole set (ARM's PATCH): null drops one, {} clears all.
    path = f"/onlineEndpoints/{name}"
    status, body = rest.call("PATCH", path, {"tags": {"v": None, "w": "1", "x": "2"}})
    assert status == 200 and body["tags"] == {"w": "1", "x": "2"}
    status, body = rest.call("PATCH", path, {"properties": {}})
    assert status == 200 and body["tags"] == {"w": "1", "x": "2"}  # no `tags`: they stay
    status, body = rest.call("PATCH", path, {"tags": {"w": 5}})
    assert status == 400 and "tags.w must be a string" in body["message"]
    status, body = rest.call("PATCH", path, {"tags": {}})
    assert status == 200 and body["tags"] == {}

    status, body = rest.call("GET", "/noSuchThing")
    assert status == 404 and body["code"] == 5
    assert rest.call("DELETE", f"/onlineEndpoints/{name}")[0] == 200


def test_batch_endpoint_put_get_list_delete(
    rest: Rest, local_platform: PlatformState, tmp_path: Path, test_id: str
) -> None:
    name = f"rest-batch-{test_id}"
    made = rest.send("PUT", f"/batchEndpoints/{name}", {"properties": {"description": "b"}})
    assert made.status_code == 201, made.text
    props = made.json()["properties"]
    assert props["authMode"] == "AMLToken" and props["scoringUri"].endswith("/jobs")
    status, listed = rest.call("GET", "/batchEndpoints")
    assert status == 200 and name in [e["name"] for e in listed["value"]]
    status, body = rest.call("PUT", f"/batchEndpoints/{name}", {"properties": {"description": "c"}})
    assert status == 200 and body["properties"]["description"] == "c" and body["etag"] == "2"
    status, body = rest.call("GET", f"/batchEndpoints/{name}/deployments")
    assert status == 200 and body["value"] == []

    # PATCH: tags only (Azure's partial batch endpoint), If-Match like PUT, {} clears them.
    ep_path = f"/batchEndpoints/{name}"
    patched = rest.send("PATCH", ep_path, {"tags": {"a": "1"}}, headers={"If-Match": '"2"'})
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == {"a": "1"} and patched.headers["etag"] == '"3"'
    assert patched.json()["properties"]["description"] == "c"
    for bad, code, says in [
        ({"tags": {"b": "2"}}, 412, "not 2"),  # with the stale If-Match below
        ({"sku": {"capacity": 2}}, 400, "no sku"),
        ({"tags": {"b": ["x"]}}, 400, "tags.b"),
    ]:
        headers = {"If-Match": '"2"'} if code == 412 else None
        status, error = rest.call("PATCH", ep_path, bad, headers=headers)
        assert status == code and says in error["message"], (bad, error)
    assert rest.call("GET", ep_path)[1]["tags"] == {"a": "1"}
    assert rest.call("PATCH", ep_path, {"tags": {}})[1]["tags"] == {}

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def init():\n    pass\n")
    assert local_platform.registry_address
    with RegistryClient(local_platform.registry_address, rest.admin_token) as client:
        code = arm.artifact_uri(client.upload(tmp_path / "code"))
    deployment = {
        "properties": {
            "codeConfiguration": {"codeId": code, "scoringScript": "score.py"},
            "miniBatchSize": 2,
            "outputAction": "SummaryOnly",
            "retrySettings": {"timeout": "PT45S"},
            "errorThreshold": 0,
        }
    }
    path = f"/batchEndpoints/{name}/deployments/score"
    made = rest.send("PUT", path, deployment)
    assert made.status_code == 201, made.text
    props = made.json()["properties"]
    assert props["codeConfiguration"]["codeId"] == code and props["miniBatchSize"] == 2
    operation = made.headers["azure-asyncoperation"].removeprefix(rest.base)
    assert props["properties"]["AzureAsyncOperationUri"].endswith(operation)
    built = wait_for(
        lambda: (got := rest.call("GET", operation)[1])["status"] != "InProgress" and got,
        "the batch service to build the deployment's environment",
        120,
    )
    assert built["status"] == "Succeeded" and built["name"].startswith("bd:"), built
    assert props["outputAction"] == "SummaryOnly" and props["errorThreshold"] == 0
    assert props["retrySettings"] == {"maxRetries": 3, "timeout": "PT45S"}
    endpoint = rest.call("GET", f"/batchEndpoints/{name}")[1]
    assert endpoint["properties"]["defaults"]["deploymentName"] == "score"
    bad = {"properties": {**deployment["properties"], "retrySettings": {"timeout": "45"}}}
    status, error = rest.call("PUT", path, bad)
    assert status == 400 and "retrySettings.timeout" in error["message"]
    assert rest.call("GET", path)[1]["etag"] == made.json()["etag"]

    # PATCH a batch deployment: tags and description (Azure's partial batch deployment).
    change = {"tags": {"t": "1"}, "properties": {"description": "patched"}}
    etag = made.headers["etag"]
    patched = rest.send("PATCH", path, change, headers={"If-Match": etag})
    assert patched.status_code == 200, patched.text
    props = patched.json()["properties"]
    assert patched.json()["tags"] == {"t": "1"} and props["description"] == "patched"
    assert props["miniBatchSize"] == 2 and props["outputAction"] == "SummaryOnly"
    status, error = rest.call("PATCH", path, {"tags": {}}, headers={"If-Match": etag})
    assert status == 412
    assert rest.call("GET", path)[1]["tags"] == {"t": "1"}
    status, body = rest.call("PATCH", path, {"tags": {"t": None}})
    assert status == 200 and body["tags"] == {} and body["properties"]["description"] == "patched"
    assert rest.call("DELETE", path)[0] == 200
    assert rest.call("DELETE", f"/batchEndpoints/{name}")[0] == 200


def test_openapi_document_is_served_and_valid(rest: Rest) -> None:
    status, served = rest.call("GET", "/openapi.json", auth=False)
    assert status == 200
    validate(served)
    assert served == document()
    ops = served["paths"]["/onlineEndpoints/{name}"]
    assert set(ops) == {"get", "put", "patch", "delete"}
    assert "/onlineEndpoints/{endpointName}/deployments/{deploymentName}/getLogs" in served["paths"]
    assert "/jobs/{name}" in served["paths"] and "/batchEndpoints/{name}" in served["paths"]
    schemas = served["components"]["schemas"]
    props = schemas["OnlineEndpointProperties"]["properties"]
    assert {"Key", "AMLToken"} <= set(props["authMode"]["enum"])
    assert "Succeeded" in props["provisioningState"]["enum"]
    assert "properties" in schemas["OnlineDeploymentTrackedResource"]["properties"]


def test_every_service_answers_over_rest(rest: Rest, test_id: str) -> None:
    """Routed to the right process: assets (registry), jobs (batch), costs and autoscale
    settings (metrics), each reading real state."""
    status, models = rest.call("GET", "/models?listViewType=All")
    assert status == 200 and "value" in models
    assert rest.call("GET", "/assets/model")[0] == 404  # one REST shape: Azure's
    status, jobs = rest.call("GET", "/jobs")
    assert status == 200 and "value" in jobs
    status, costs = rest.call("GET", "/costs")
    assert status == 200 and costs["currency"] == "USD"
    query = {"type": "Usage", "timeframe": "MonthToDate",
             "dataset": {"grouping": [{"type": "Dimension", "name": "ResourceId"}]}}  # fmt: skip
    status, costs = rest.call("POST", "/providers/Microsoft.CostManagement/query", query)
    assert status == 200 and costs["type"] == "Microsoft.CostManagement/query", costs
    names = [c["name"] for c in costs["properties"]["columns"]]
    assert names == ["Cost", "ResourceId", "Currency"]
    assert all(len(row) == 3 and row[2] == "USD" for row in costs["properties"]["rows"])
    query = {"timeframe": "MonthToDate", "dataset": {"granularity": "Hourly"}}
    status, error = rest.call("POST", "/providers/Microsoft.CostManagement/query", query)
    assert status == 400 and "dataset.granularity" in error["message"]
    status, settings = rest.call("GET", "/autoscaleSettings")
    assert status == 200 and "value" in settings
    status, missing = rest.call("GET", f"/jobs/no-such-job-{test_id}")
    assert status == 404 and missing["code"] == 5


def test_tokens_over_rest(rest: Rest, test_id: str) -> None:
    """The Access service is REST too: an admin creates, lists and revokes; roles hold."""
    user = f"rest-{test_id}"
    status, created = rest.call(
        "POST", "/tokens", {"user": user, "role": "ROLE_READER", "expiresInS": "3600"}
    )
    assert status == 200, created
    secret, token_id = created["secret"], created["token"]["id"]
    assert created["token"]["expiresAt"]
    status, listed = rest.call("GET", "/tokens")
    assert status == 200
    [mine] = [t for t in listed["tokens"] if t["user"] == user]
    assert "secret" not in mine and mine["expiresAt"] == created["token"]["expiresAt"]

    assert rest.call("GET", "/onlineEndpoints", auth=secret)[0] == 200
    # Cost Management's query is a POST, but a read: a reader may make it, as GET /costs.
    query = {"type": "Usage", "timeframe": "MonthToDate"}
    status, costs = rest.call(
        "POST", "/providers/Microsoft.CostManagement/query", query, auth=secret
    )
    assert status == 200 and costs["type"] == "Microsoft.CostManagement/query", costs
    status, body = rest.call("POST", "/tokens", {"user": "x", "role": "ROLE_ADMIN"}, auth=secret)
    assert status == 403 and "may not call CreateToken" in body["message"]
    bad = {"user": user, "role": "ROLE_READER", "expiresInS": "-1"}
    status, body = rest.call("POST", "/tokens", bad)
    assert status == 400 and "expires_in_s must be between" in body["message"]

    status, revoked = rest.call("POST", f"/tokens/{token_id}/revoke")
    assert status == 200 and revoked["revokedAt"]
    status, body = rest.call("GET", "/onlineEndpoints", auth=secret)
    assert status == 401 and "was revoked" in body["message"]
    assert [t for t in rest.call("GET", "/tokens")[1].get("tokens", []) if t["user"] == user] == []


def test_assets_in_azures_shape(
    rest: Rest, local_platform: PlatformState, tmp_path: Path, test_id: str
) -> None:
    """Models, environments and data with their versions: PUT creates (201) or changes what
    Azure lets change (description, tags, isArchived) under If-Match; containers are read
    from the versions; bad bodies are 400 naming the field and store nothing."""
    (tmp_path / "model.pkl").write_bytes(b"not really a model")
    # Uploaded over REST (a tar archive as the body); the gRPC stream gives the same URI.
    tar = {"authorization": f"Bearer {rest.admin_token}", "content-type": "application/x-tar"}
    put = httpx.put(
        f"{rest.base}/artifacts/model.pkl", content=pack(tmp_path / "model.pkl"), headers=tar
    )
    assert put.status_code == 200, put.text
    uri = put.json()["uri"]
    assert uri.startswith("azureml://artifacts/sha256:") and uri.endswith("/model.pkl")
    assert local_platform.registry_address
    with RegistryClient(local_platform.registry_address, rest.admin_token) as client:
        assert arm.artifact_uri(client.upload(tmp_path / "model.pkl")) == uri
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    put = httpx.put(
        f"{rest.base}/artifacts/folder?isDirectory=true",
        content=pack(tmp_path / "folder"),
        headers=tar,
    )
    assert put.status_code == 200 and put.json()["uri"].endswith("/folder/"), put.text
    for where, body, says in [
        ("/artifacts/model.pkl", b"", "the body is empty"),
        ("/artifacts/other.pkl", pack(tmp_path / "model.pkl"), "must hold exactly"),
        ("/artifacts/model.pkl", b"not a tar archive" * 40, "not a valid tar"),
        ("/artifacts/model.pkl?isDirectory=true", pack(tmp_path / "model.pkl"), "folder"),
    ]:
        bad = httpx.put(f"{rest.base}{where}", content=body, headers=tar)
        assert bad.status_code == 400 and says in bad.json()["message"], (where, bad.text)
    model = f"rest-model-{test_id}"
    path = f"/models/{model}/versions/1"
    body = {"properties": {"modelUri": uri, "description": "d", "tags": {"a": "1"}}}
    made = rest.send("PUT", path, body)
    assert made.status_code == 201, made.text
    assert made.headers["etag"] == '"1"'
    got = made.json()
    assert got["id"] == f"{WORKSPACE}/models/{model}/versions/1" and got["name"] == "1"
    assert got["type"] == "Microsoft.MachineLearningServices/workspaces/models/versions"
    props = got["properties"]
    assert props["modelUri"] == uri and props["modelType"] == "custom_model"
    assert props["isArchived"] is False and props["provisioningState"] == "Succeeded"
    assert props["tags"] == {"a": "1"} and got["systemData"]["createdAt"]

    status, box = rest.call("GET", f"/models/{model}")
    assert status == 200 and box["type"].endswith("/workspaces/models")
    assert box["properties"]["latestVersion"] == "1" and box["properties"]["nextVersion"] == "2"
    assert model in [c["name"] for c in rest.call("GET", "/models")[1]["value"]]
    status, versions = rest.call("GET", f"/models/{model}/versions")
    assert status == 200 and [v["name"] for v in versions["value"]] == ["1"]
    # Newest first, as Azure lists them: `value[0]` is the latest version.
    ordered = f"rest-order-{test_id}"
    for version in ("1", "3", "2"):
        made = rest.send("PUT", f"/models/{ordered}/versions/{version}", body)
        assert made.status_code == 201, made.text
    status, versions = rest.call("GET", f"/models/{ordered}/versions")
    assert [v["name"] for v in versions["value"]] == ["2", "3", "1"], versions

    # A GET's answer PUT back changes nothing; only description, tags, stage, isArchived may
    # change.
    again = rest.send("PUT", path, got)
    assert again.status_code == 200 and again.headers["etag"] == '"1"', again.text
    status, error = rest.call("PUT", path, {"properties": {**props, "modelType": "mlflow_model"}})
    assert status == 409 and "modelType cannot change" in error["message"]
    changed = {"properties": {**props, "tags": {"b": "2"}}}
    status, error = rest.call("PUT", path, changed, headers={"If-Match": '"7"'})
    assert status == 412 and error["code"] == 10
    tagged = rest.send("PUT", path, changed, headers={"If-Match": '"1"'})
    assert tagged.status_code == 200 and tagged.headers["etag"] == '"2"', tagged.text
    assert tagged.json()["properties"]["tags"] == {"b": "2"}
    # docs/security.md's limits hold for a PUT on a version too: 400, the version unchanged.
    too_many = {"properties": {**props, "tags": {f"t{i}": "v" for i in range(51)}}}
    status, error = rest.call("PUT", path, too_many)
    assert status == 400 and "tags: 51 given, at most 50 are allowed" in error["message"], error
    too_long = {"properties": {**props, "tags": {"b": "2"}, "description": "x" * 5000}}
    status, error = rest.call("PUT", path, too_long)
    assert status == 400 and "description is 5000 characters" in error["message"], error
    kept = rest.send("GET", path)
    assert kept.headers["etag"] == '"2"' and kept.json()["properties"]["tags"] == {"b": "2"}
    # stage is kept (as the CLI's YAML keeps it) and may change, as tags.
    assert kept.json()["properties"]["stage"] == ""
    staged = {"properties": {**props, "tags": {"b": "2"}, "stage": "Production"}}
    promoted = rest.send("PUT", path, staged, headers={"If-Match": '"2"'})
    assert promoted.status_code == 200 and promoted.headers["etag"] == '"3"', promoted.text
    assert rest.call("GET", path)[1]["properties"]["stage"] == "Production"
    props = {**props, "stage": "Production"}

    archived = {"properties": {**props, "tags": {"b": "2"}, "isArchived": True}}
    assert rest.call("PUT", path, archived)[1]["properties"]["isArchived"] is True
    assert model not in [c["name"] for c in rest.call("GET", "/models")[1]["value"]]
    shown = rest.call("GET", "/models?listViewType=ArchivedOnly")[1]["value"]
    assert model in [c["name"] for c in shown]
    assert rest.call("GET", f"/models/{model}/versions")[1]["value"] == []
    status, error = rest.call("GET", "/models?listViewType=Some")
    assert status == 400 and "listViewType" in error["message"]

    env = f"rest-env-{test_id}"
    made = rest.send(
        "PUT", f"/environments/{env}/versions/3", {"properties": {"image": "python:3.11"}}
    )
    assert made.status_code == 201, made.text
    props = made.json()["properties"]
    assert props["image"] == "python:3.11" and props["environmentType"] == "UserCreated"
    assert props["osType"] == "Linux"
    assert rest.call("GET", f"/environments/{env}")[1]["properties"]["nextVersion"] == "4"
    # A container's PUT archives or restores every version, under its own ETag.
    box = rest.send("GET", f"/environments/{env}")
    etag = box.headers["etag"]
    archive = {"properties": {"isArchived": True}}
    status, error = rest.call("PUT", f"/environments/{env}", archive, headers={"If-Match": '"99"'})
    assert status == 412 and error["code"] == 10
    status, error = rest.call("PUT", f"/environments/{env}", {"properties": {"description": "x"}})
    assert status == 400 and "on versions" in error["message"]
    status, error = rest.call("PUT", f"/environments/no-such-{test_id}", archive)
    assert status == 400 and "created by its first version" in error["message"]
    archived = rest.send("PUT", f"/environments/{env}", archive, headers={"If-Match": etag})
    assert archived.status_code == 200 and archived.json()["properties"]["isArchived"], (
        archived.text
    )
    assert archived.headers["etag"] != etag
    version = rest.call("GET", f"/environments/{env}/versions/3")[1]
    assert version["properties"]["isArchived"] is True
    status, box = rest.call("PUT", f"/environments/{env}", {"properties": {}})
    assert status == 200 and box["properties"]["isArchived"] is False

    data = f"rest-data-{test_id}"
    file_uri = "https://example.com/rows.csv"
    made = rest.send(
        "PUT", f"/data/{data}/versions/1",
        {"properties": {"dataType": "uri_file", "dataUri": file_uri}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["type"] == "Microsoft.MachineLearningServices/workspaces/data/versions"
    assert made.json()["properties"]["dataUri"] == file_uri
    assert rest.call("GET", f"/data/{data}")[1]["properties"]["dataType"] == "uri_file"

    # Each bad body: 400 naming the field, nothing stored.
    bad = f"rest-bad-{test_id}"
    cases: list[tuple[str, dict[str, Any], str]] = [
        (f"/models/{bad}/versions/1", {"properties": {}}, "properties.modelUri"),
        (
            f"/models/{bad}/versions/1",
            {"properties": {"modelUri": "https://x/m.pkl"}},
            "properties.modelUri",
        ),
        (
            f"/models/{bad}/versions/1",
            {"properties": {"modelUri": uri, "modelType": "onnx"}},
            "model type",
        ),
        (
            f"/models/{bad}/versions/1",
            {"properties": {"modelUri": uri, "jobName": "train-1"}},
            "properties.jobName: Sluice keeps no jobName",
        ),
        (
            f"/environments/{bad}/versions/1",
            {"properties": {"image": "my/server", "inferenceConfig": {"scoringRoute": {}}}},
            "properties.inferenceConfig: a custom container's routes are not honoured",
        ),
        (
            f"/environments/{bad}/versions/1",
            {"properties": {"image": "my/server", "osType": "Windows"}},
            "only Linux is served",
        ),
        (f"/models/{bad}/versions/1", {"name": "2", "properties": {"modelUri": uri}}, "must match"),
        (f"/environments/{bad}/versions/1", {"properties": {}}, "needs `conda_file`"),
        (
            f"/environments/{bad}/versions/1",
            {"properties": {"condaFile": "name: e\n# " + "x" * 70_000}},
            "conda_file is 70010 characters; at most 65536",
        ),
        (
            f"/environments/{bad}/versions/1",
            {"properties": {"build": {"contextUri": "https://x/ctx"}}},
            "properties.build",
        ),
        (
            f"/data/{bad}/versions/1",
            {"properties": {"dataType": "mltable", "dataUri": file_uri}},
            "properties.dataType",
        ),
        (f"/data/{bad}/versions/1", {"properties": {"dataType": "uri_file"}}, "properties.dataUri"),
        (
            f"/data/{bad}/versions/1",
            {"properties": {"dataType": "uri_file", "dataUri": "not a uri"}},
            "properties.dataUri 'not a uri' is not a URI (https://..., file:///...",
        ),
        (
            f"/data/{bad}/versions/1",
            {"properties": {"dataType": "uri_file", "dataUri": "rows.csv"}},
            "a local file or folder is uploaded first",
        ),
    ]
    for where, sent, says in cases:
        status, error = rest.call("PUT", where, sent)
        assert status == 400 and error["code"] == 3, (sent, error)
        assert says in error["message"], (sent, error)
    for plural in ("models", "environments", "data"):
        status, error = rest.call("GET", f"/{plural}/{bad}")
        assert status == 404 and bad in error["message"]
    status, error = rest.call("GET", f"/models/{model}/versions/9")
    assert status == 404 and "versions: 1" in error["message"]


def test_artifact_upload_over_rest_takes_64_mib(rest: Rest, tmp_path: Path) -> None:
    """Above gRPC's default 4 MiB message the upload still lands (the registry takes the
    archive as one message); above the 64 MiB limit Envoy answers 413 as JSON."""
    (tmp_path / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    tar = {"authorization": f"Bearer {rest.admin_token}", "content-type": "application/x-tar"}
    put = httpx.put(
        f"{rest.base}/artifacts/big.bin", content=pack(tmp_path / "big.bin"), headers=tar
    )
    assert put.status_code == 200 and put.json()["uri"].endswith("/big.bin"), put.text
    too_big = httpx.put(
        f"{rest.base}/artifacts/big.bin", content=b"\0" * (65 * 1024 * 1024), headers=tar
    )
    assert too_big.status_code == 413 and too_big.json()["code"] == 8, too_big.text
