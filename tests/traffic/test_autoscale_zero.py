"""Scale to zero, end to end through the real gateway: an autoscale profile with
minimum 0 takes an idle deployment to zero instances (the activator is listed in their
place); its first request is held, not failed, while an instance starts, and answered
200 through Envoy; idle again, it goes back to zero; deleted at zero, it goes. Prints
the first response's time from zero against a warm request (bench/autoscale measures
the distribution). An Open Inference Protocol gRPC call wakes a deployment at zero the
same way."""

from __future__ import annotations

import os
import signal
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pymongo
import pytest

from sluice.common.azure_ids import resource_id
from sluice.common.resources import DEPLOYMENT_INSTANCES
from sluice.common.supervisor import Supervisor
from sluice.sdk.autoscale import AutoscaleClient, make_profile, make_rule
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.cli import Cli
from sluice.testing.events import scaled_events
from sluice.testing.plugin import EnvoyGateway, RunningService, ServiceStarter
from sluice.testing.traffic import GatewayPorts, Traffic, healthy_addresses, start_controller
from sluice.testing.wait import wait_for
from sluice.traffic.domain import cluster_name
from sluice.v1 import autoscale_pb2
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
ENDPOINT = "my-endpoint"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
IDLE = "RequestsPerMinute < 1 avg 10s"


def infer_request() -> pb.ModelInferRequest:
    """BODY's row as an OIP gRPC ModelInfer (raw contents, as tritonclient sends it)."""
    infer = pb.ModelInferRequest(model_name=ENDPOINT, id="cold-1")
    infer.inputs.add(name="x", datatype="FP64", shape=[1, 10])
    infer.raw_input_contents.append(struct.pack("<10d", *range(1, 11)))
    return infer


def grpc_call(traffic: Traffic, key: str, method: str, request: Any) -> tuple[Any, grpc.Call]:
    """One OIP gRPC call through the gateway (generous deadline: it may wake the deployment)."""
    options = [("grpc.default_authority", traffic.host(ENDPOINT))]
    with grpc.insecure_channel(f"127.0.0.1:{traffic.http.port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {key}")]
        reply, call = getattr(stub, method).with_call(request, metadata=metadata, timeout=60)
        return reply, call


def served(reply: pb.ModelInferResponse, call: grpc.Call) -> bool:
    """A ModelInfer answer: one FP64 prediction, from blue."""
    (output,) = reply.outputs
    return (
        reply.id == "cold-1"
        and list(output.shape) == [1]
        and len(reply.raw_output_contents[0]) == 8
        and dict(call.initial_metadata())["azureml-model-deployment"] == "blue"
    )


def gateway_holds_at(traffic: Traffic, activator: Any) -> bool:
    """Envoy routes blue (REST and gRPC) to this activator only: the instance list a restarted
    provisioner wrote is in the gateway, and the activator passed its health checks."""
    return healthy_addresses(traffic, cluster_name(ENDPOINT, "blue")) == [activator.address]


def test_a_deployment_at_zero_answers_its_first_request_and_goes_back_to_zero(
    start_service: ServiceStarter,
    provisioner: RunningService,
    client: RegistryClient,
    trained_examples: Path,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_METRICS_BUCKET_S", "5")
    monkeypatch.setenv("SLUICE_METRICS_SNAPSHOT_INTERVAL_S", "1")
    metrics = start_service("metrics", envoy=envoy_gateway)
    traffic = start_controller(
        metrics.settings,
        supervisor,
        envoy_gateway,
        gateway_ports,
        {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
    )
    online = trained_examples / "online"
    client.create_online_endpoint(load_online_endpoint(online / "endpoint.yml").spec)
    spec = load_online_deployment(
        online / "blue-deployment.yml", client.upload, ["environment=null", "instance_count=1"]
    ).spec
    client.create_online_deployment(spec)

    def instances() -> list[Any]:
        return list(client.get_online_deployment(ENDPOINT, "blue").instances)

    def real(listed: list[Any]) -> list[Any]:
        return [i for i in listed if not i.id.endswith("-activator")]

    def at_zero() -> bool:
        listed = instances()
        return not real(listed) and [i.id for i in listed] == ["blue-activator"]

    def stopped() -> bool:
        """No instance process runs (the provisioner's instance history, as costs read it)."""
        report = autoscale.costs(ENDPOINT, "blue", since_s=3600)
        return all(line.running_instances == 0 for line in report.lines)

    wait_for(lambda: len(real(instances())) == 1, "blue to serve", deadline=240)
    client.set_traffic(ENDPOINT, {"blue": 100})
    key = client.get_credentials(ENDPOINT).primary_key
    wait_for(lambda: traffic.score(ENDPOINT, key, body=BODY)[0] == 200, "blue to be routed")
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        assert traffic.score(ENDPOINT, key, body=BODY)[0] == 200
        warm.append(time.perf_counter() - started)

    autoscale = AutoscaleClient(metrics.address, metrics.settings.admin_token or "")
    setting = autoscale_pb2.AutoscaleSetting(
        name="blue-zero", endpoint_name=ENDPOINT, deployment_name="blue", enabled=True
    )
    profile = make_profile("default", 1, 0, 1)
    profile.rules.append(make_rule(IDLE, ("in", "1"), cooldown_min=0.1, timegrain="avg 5s"))
    setting.profiles.append(profile)
    autoscale.create(setting)

    wait_for(at_zero, "zero instances after an idle period", deadline=90)
    wait_for(stopped, "the last instance's process to exit", deadline=30)
    shown = autoscale.get("blue-zero")
    assert (shown.capacity, shown.decisions[0].new_count) == (0, 0)
    assert shown.decisions[0].rule == f"{IDLE} -> in 1"
    started = time.perf_counter()
    status, headers, body = traffic.score(ENDPOINT, key, body=BODY)
    cold = time.perf_counter() - started
    assert status == 200, body
    assert headers.get("azureml-model-deployment") == "blue"
    wait_for(lambda: len(real(instances())) == 1, "the woken instance listed", deadline=30)
    assert "blue-activator" not in [i.id for i in instances()]
    assert traffic.score(ENDPOINT, key, body=BODY)[0] == 200  # straight to the instance
    warm.sort()
    print(
        f"scale from zero: first response {cold:.3f} s; "
        f"warm median {warm[len(warm) // 2] * 1000:.1f} ms"
    )
    wait_for(at_zero, "back to zero once idle", deadline=90)
    wait_for(stopped, "no process left once idle", deadline=30)
    costs = autoscale.costs(ENDPOINT, "blue", since_s=3600)
    assert costs.total > 0 and all(line.running_instances == 0 for line in costs.lines)

    # The provisioner dies (kill -9) while the setting holds blue at zero: its successor
    # reads the setting's zero at start, lists its own activator in the dead one's place,
    # starts nothing, and a request through Envoy still wakes blue (then idle, zero again):
    # here an OIP gRPC ModelInfer, which the gateway bridges to the REST cluster, so the
    # activator holds it as it holds REST.
    old = instances()[0].address
    os.kill(provisioner.process.pid, signal.SIGKILL)
    start_service("provisioner")

    def relisted() -> bool:
        listed = instances()
        return [i.id for i in listed] == ["blue-activator"] and listed[0].address != old

    wait_for(relisted, "the new provisioner's activator listed", deadline=60)
    new = instances()[0]
    wait_for(lambda: gateway_holds_at(traffic, new), "the gateway at the new activator", 60)
    until = time.monotonic() + 5
    while time.monotonic() < until:
        assert at_zero() and stopped(), "the restart started an instance"
        time.sleep(0.5)  # watching that nothing changes, not waiting for a condition
    started = time.perf_counter()
    assert served(*grpc_call(traffic, key, "ModelInfer", infer_request()))
    print(f"scale from zero, gRPC ModelInfer: first response {time.perf_counter() - started:.3f} s")
    wait_for(at_zero, "back to zero after the wake by the new activator", deadline=90)

    # Deleted while at zero (with its endpoint): it goes (the activator is no instance to
    # wait for).
    settings = metrics.settings
    with pymongo.MongoClient(settings.mongodb_uri) as mongo:
        listed = mongo[settings.mongodb_database][DEPLOYMENT_INSTANCES]
        at_zero_list = listed.find_one({"_id": f"{ENDPOINT}/blue"})
        assert at_zero_list is not None and len(at_zero_list["instances"]) == 1
        client.delete_online_endpoint(ENDPOINT)
        wait_for(
            lambda: listed.find_one({"_id": f"{ENDPOINT}/blue"}) is None,
            "the provisioner to finish removing blue (no instance list left)",
            deadline=60,
        )
    autoscale.close()


def test_min_instances_zero_in_scale_settings_goes_to_zero_when_idle_and_wakes(
    start_service: ServiceStarter,
    registry: RunningService,
    envs_dir: Path,
    client: RegistryClient,
    trained_examples: Path,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """`scale_settings: {type: target_utilization, min_instances: 0}`, no autoscale
    setting: the provisioner itself takes the deployment to zero once no request reached it
    for the idle period (its instances count requests in their liveness answers), and a
    request wakes it; the decisions are published and listed by `sluice monitor autoscale
    show --resource`; a provisioner killed while it is at zero leaves it at zero for its
    successor, whose activator wakes it (there with an OIP gRPC ModelMetadata call, which
    the activator's gRPC side holds and relays)."""
    monkeypatch.setenv("SLUICE_SCALE_TO_ZERO_IDLE_S", "6")
    start_service.settings = start_service.settings.model_copy(update={"envs_dir": envs_dir})
    provisioner = start_service("provisioner")
    metrics = start_service("metrics")
    monkeypatch.setenv("SLUICE_METRICS_ADDRESS", metrics.address)
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", metrics.settings.admin_token or "")
    traffic = start_controller(provisioner.settings, supervisor, envoy_gateway, gateway_ports)
    online = trained_examples / "online"
    client.create_online_endpoint(load_online_endpoint(online / "endpoint.yml").spec)
    sets = [
        "environment=null",
        "instance_count=1",
        "scale_settings.type=target_utilization",
        "scale_settings.min_instances=0",
        "scale_settings.max_instances=2",
        "liveness_probe.initial_delay=1",
        "liveness_probe.period=1",
    ]
    spec = load_online_deployment(online / "blue-deployment.yml", client.upload, sets).spec
    client.create_online_deployment(spec)

    def ids() -> list[str]:
        return [i.id for i in client.get_online_deployment(ENDPOINT, "blue").instances]

    def serving() -> bool:
        return len(ids()) == 1 and ids() != ["blue-activator"]

    wait_for(serving, "blue to serve", deadline=240)
    client.set_traffic(ENDPOINT, {"blue": 100})
    key = client.get_credentials(ENDPOINT).primary_key
    wait_for(lambda: traffic.score(ENDPOINT, key, body=BODY)[0] == 200, "blue to be routed")
    # Requests keep it up: scoring for longer than the idle period, it never leaves.
    until = time.monotonic() + 9
    while time.monotonic() < until:
        assert traffic.score(ENDPOINT, key, body=BODY)[0] == 200
        assert "blue-activator" not in ids()
        time.sleep(0.5)  # the traffic the test sends, not a wait for a condition
    wait_for(lambda: ids() == ["blue-activator"], "zero instances once idle", deadline=60)
    started = time.perf_counter()
    status, headers, body = traffic.score(ENDPOINT, key, body=BODY)
    cold = time.perf_counter() - started
    assert status == 200, body
    assert headers.get("azureml-model-deployment") == "blue"
    seen: list[list[str]] = []  # the instance lists shown meanwhile, for a failure's message

    def woken_listed() -> bool:
        # The client goes on scoring meanwhile, as a real one would: the woken deployment is
        # in use, so it cannot go back to zero before it is seen (at load 12 it did once).
        assert traffic.score(ENDPOINT, key, body=BODY)[0] == 200
        listed = ids()
        if not seen or seen[-1] != listed:
            seen.append(listed)
        return len(listed) == 1 and listed != ["blue-activator"]

    wait_for(
        woken_listed,
        "the woken instance listed in the activator's place",
        deadline=30,
        why=lambda: f"instance lists seen, in order: {seen}",
    )
    print(f"scale_settings zero: first response {cold:.3f} s")
    wait_for(lambda: ids() == ["blue-activator"], "back to zero once idle", deadline=60)
    # And it stays there (the instance that went is no sign of activity), longer than the
    # idle period plus the make-before-break of a wake.
    until = time.monotonic() + 10
    while time.monotonic() < until:
        assert ids() == ["blue-activator"]
        time.sleep(0.5)  # watching that nothing changes, not waiting for a condition
    # Each of its decisions was published as `autoscale.scaled`: to zero, woken, to zero.
    published = wait_for(
        lambda: len(e := scaled_events(provisioner.settings)) >= 3 and e, "3 decisions published"
    )
    assert [(d["old_count"], d["new_count"]) for d in published] == [(1, 0), (0, 1), (1, 0)]
    assert published[0]["rule"] == "no request for 6s (min_instances: 0)"
    # And stored: the deployment's decisions, most recent first, as the CLI shows them.
    blue_id = resource_id("onlineEndpoints", ENDPOINT, "deployments", "blue")
    shown = cli.json("monitor", "autoscale", "show", "--resource", blue_id)
    assert shown["autoscaleSetting"] is None
    assert shown["scaleSettings"] == {"type": "target_utilization", "minInstances": 0}
    assert [(d["setting"], d["oldCount"], d["newCount"]) for d in shown["decisions"]] == [
        ("scale_settings", 1, 0),
        ("scale_settings", 0, 1),
        ("scale_settings", 1, 0),
    ]
    assert shown["decisions"][2]["rule"] == "no request for 6s (min_instances: 0)"

    # The provisioner dies (kill -9) while blue is at zero; its successor lists its own
    # activator in the dead one's place, does not wake blue, and a request still wakes it.
    old = client.get_online_deployment(ENDPOINT, "blue").instances[0].address
    os.kill(provisioner.process.pid, signal.SIGKILL)
    start_service("provisioner")

    def relisted() -> bool:
        listed = client.get_online_deployment(ENDPOINT, "blue").instances
        return [i.id for i in listed] == ["blue-activator"] and listed[0].address != old

    wait_for(relisted, "the new provisioner's activator listed", deadline=60)
    activator = client.get_online_deployment(ENDPOINT, "blue").instances[0]
    wait_for(lambda: gateway_holds_at(traffic, activator), "the gateway at the new activator", 60)
    until = time.monotonic() + 8
    while time.monotonic() < until:
        assert ids() == ["blue-activator"], "the restart woke blue"
        time.sleep(0.5)  # watching that nothing changes, not waiting for a condition
    # Straight to the activator, without the gateway's secret, a ModelInfer in the gateway's
    # bridged form (the gRPC message over HTTP/1.1) is refused as a gRPC status (which the
    # bridge would pass on), and nothing is woken.
    message = infer_request().SerializeToString()
    bridged = urllib.request.Request(
        f"http://{activator.address}/inference.GRPCInferenceService/ModelInfer",
        data=struct.pack(">BI", 0, len(message)) + message,
        headers={"content-type": "application/grpc"},
    )
    with urllib.request.urlopen(bridged, timeout=10) as answer:  # noqa: S310 - loopback
        assert (answer.status, answer.headers["grpc-status"]) == (200, "16")
    assert ids() == ["blue-activator"]
    # Through the gateway, a gRPC method other than ModelInfer (bridged like it): held while
    # blue starts, forwarded, answered with the deployment named as REST does.
    started = time.perf_counter()
    meta, call = grpc_call(traffic, key, "ModelMetadata", pb.ModelMetadataRequest(name=ENDPOINT))
    cold = time.perf_counter() - started
    assert meta.name and meta.outputs[0].name == "predict"
    assert dict(call.initial_metadata())["azureml-model-deployment"] == "blue"
    print(f"scale_settings zero, gRPC ModelMetadata: first response {cold:.3f} s")
    assert served(*grpc_call(traffic, key, "ModelInfer", infer_request()))
    wait_for(serving, "woken by the new provisioner's activator", deadline=30)
