"""The provisioner as a real process, with the registry: deployments become serving instances."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from sluice.common import gateway_auth
from sluice.common.resources import OnlineDeployment, ProvisioningState
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.events import scaled_events
from sluice.testing.plugin import RunningService, ServiceStarter, traversable_dir
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")


def deploy(
    client: RegistryClient, examples: Path, name: str = "blue", sets: tuple[str, ...] = ()
) -> None:
    """Create the example endpoint (once) and a deployment without extra environment."""
    try:
        client.get_online_endpoint("my-endpoint")
    except Exception:
        client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    spec = load_online_deployment(
        examples / "online/blue-deployment.yml",
        client.upload,
        ["environment=null", "instance_count=1", *sets],
        name=name,
    ).spec
    client.create_online_deployment(spec)


def state(client: RegistryClient, name: str = "blue") -> OnlineDeployment:
    return client.get_online_deployment("my-endpoint", name)


def settled(client: RegistryClient, name: str = "blue") -> OnlineDeployment | None:
    doc = state(client, name)
    terminal = {ProvisioningState.succeeded, ProvisioningState.failed}
    return doc if doc.meta.provisioning_state in terminal else None


def score(provisioner: RunningService, address: str, deployment: str = "blue") -> list[float]:
    """Score one instance directly, with the header only the gateway has (gateway_auth)."""
    secret = gateway_auth.secret_for(
        provisioner.settings.secret_key or "", "my-endpoint", deployment
    )
    body = (Path(__file__).parents[1] / "examples/online/sample-request.json").read_bytes()
    response = httpx.post(
        f"http://{address}/score", content=body, headers={gateway_auth.HEADER: secret}, timeout=10
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result, list)
    return result


def test_a_deployment_becomes_ready_and_serves(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    deploy(client, trained_examples, sets=("instance_count=2",))
    doc = wait_for(lambda: settled(client), "blue to settle", deadline=180)
    assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
    ready = [i for i in doc.instances if i.ready]
    assert len(ready) == 2
    predictions = [score(provisioner, i.address) for i in ready]
    assert predictions[0] == predictions[1] and len(predictions[0]) == 2


def test_failing_init_fails_the_deployment_with_its_traceback(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    script = trained_examples / "online/model-1/onlinescoring/score.py"
    script.write_text(
        "def init():\n    raise RuntimeError('model file is corrupt: cannot unpickle')\n\n"
        "def run(raw):\n    return raw\n"
    )
    deploy(client, trained_examples)
    doc = wait_for(lambda: settled(client), "blue to settle")
    assert doc.meta.provisioning_state is ProvisioningState.failed
    assert "model file is corrupt: cannot unpickle" in doc.meta.status_message
    assert "init() failed" in doc.meta.status_message
    assert not doc.instances


def test_a_crashed_instance_is_replaced(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    deploy(client, trained_examples)
    doc = wait_for(lambda: settled(client), "blue to settle")
    (first,) = doc.instances
    port = int(first.address.split(":")[1])
    pid = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )
    os.kill(pid, signal.SIGKILL)
    replaced = wait_for(
        lambda: [i for i in state(client).instances if i.ready and i.id != first.id],
        "a replacement instance",
    )
    assert state(client).meta.provisioning_state is ProvisioningState.succeeded
    score(provisioner, replaced[0].address)


def test_update_rolls_and_scale_keeps_healthy_instances(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    deploy(client, trained_examples)
    doc = wait_for(lambda: settled(client), "blue to settle")
    (original,) = doc.instances
    # Scale out: the original instance stays.
    client.update_online_deployment(doc.spec.model_copy(update={"instance_count": 2}))
    scaled = wait_for(
        lambda: (d := settled(client)) and len([i for i in d.instances if i.ready]) == 2 and d,
        "two ready instances",
    )
    assert original.id in {i.id for i in scaled.instances}
    # A new model version rolls every instance; the endpoint never has zero ready instances.
    green_model = load_online_deployment(
        trained_examples / "online/green-deployment.yml", client.upload
    ).spec.model
    client.update_online_deployment(scaled.spec.model_copy(update={"model": green_model}))
    seen_ready: list[int] = []

    def rolled() -> OnlineDeployment | None:
        d = state(client)
        seen_ready.append(len([i for i in d.instances if i.ready]))
        done = d.meta.provisioning_state is ProvisioningState.succeeded and d.meta.version == 3
        return (
            d
            if done and not {i.id for i in d.instances} & {i.id for i in scaled.instances}
            else None
        )

    final = wait_for(rolled, "the rollout")
    assert min(seen_ready) >= 1
    assert len(final.instances) == 2


def test_deleting_stops_instances_and_logs_are_served(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    import grpc

    from sluice.v1 import provisioner_pb2, provisioner_pb2_grpc

    deploy(client, trained_examples)
    doc = wait_for(lambda: settled(client), "blue to settle")
    (inst,) = doc.instances
    token = provisioner.settings.admin_token
    with grpc.insecure_channel(provisioner.address) as channel:
        stub = provisioner_pb2_grpc.ProvisionerStub(channel)
        logs = stub.GetLogs(
            provisioner_pb2.GetLogsRequest(endpoint_name="my-endpoint", deployment_name="blue"),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    assert logs.instance_id == inst.id and logs.text
    client.delete_online_endpoint("my-endpoint")

    def gone() -> bool:
        try:
            httpx.get(f"http://{inst.address}/", timeout=0.5)
        except httpx.HTTPError:
            return True
        return False

    wait_for(gone, "the instance to stop", deadline=20)


def test_a_conda_environment_is_built_once_shared_and_its_next_instances_start_warm(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path, envs_dir: Path
) -> None:
    client.create_online_endpoint(
        load_online_endpoint(trained_examples / "online/endpoint.yml").spec
    )
    for name in ("blue", "green"):
        spec = load_online_deployment(
            trained_examples / "online/blue-deployment.yml", client.upload, name=name
        ).spec
        client.create_online_deployment(spec)
    for name in ("blue", "green"):
        doc = wait_for(lambda n=name: settled(client, n), f"{name} to settle", deadline=180)
        assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
        score(provisioner, doc.instances[0].address, name)
    # The session's provisioners share one envs folder (as on one real host), so other tests'
    # environments may be there too, and as root an environment without packages (the
    # platform interpreter's stand-in for deployment users). What must hold: no two built
    # environments have the same requirements, and the example's conda file built one.
    built = {
        p.name: p.joinpath(".ready").read_text()
        for p in envs_dir.iterdir()
        if (p / ".ready").is_file() and p.joinpath(".ready").read_text().strip()
    }
    assert len(set(built.values())) == len(built), built
    logs = [(envs_dir / f"{name}.log").read_text() for name in built]
    assert any(
        "azureml-defaults" in log and "Sluice's inference server replaces it" in log for log in logs
    ), built
    # Its next instance starts warm, from a spare. As root that spare must not import the
    # deployer's packages as root (provisioner/spares.py): it is blue's own, started as blue's
    # user after blue's first instance, and a scale-out hands it the new instance.
    blue = state(client, "blue")
    first = listening_at(blue.instances[0].address)
    python, uid = first.cmdline()[0], first.uids().real
    spare = wait_for(lambda: spare_of(python, uid), "blue's spare to start", deadline=60)
    assert spare.uids() == first.uids()  # waiting as blue's user, never as root
    client.update_online_deployment(blue.spec.model_copy(update={"instance_count": 2}))
    scaled = wait_for(
        lambda: (d := settled(client)) and len([i for i in d.instances if i.ready]) == 2 and d,
        "two ready instances",
    )
    (new,) = [i for i in scaled.instances if i.id != blue.instances[0].id]
    assert listening_at(new.address).pid == spare.pid
    score(provisioner, new.address)


def listening_at(address: str) -> psutil.Process:
    port = int(address.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            assert conn.pid is not None
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing listens at {address}")


def spare_of(python: str, uid: int) -> psutil.Process | None:
    """A waiting provisioner spare of the environment `python` whose real user is `uid` (one
    that became an instance keeps its command line, and listens)."""
    for proc in psutil.process_iter(["cmdline", "uids"]):
        cmdline, uids = proc.info["cmdline"] or [], proc.info["uids"]
        if cmdline[:3] == [python, "-m", "sluice.provisioner.spare"] and uids.real == uid:
            with contextlib.suppress(psutil.Error):
                if not proc.net_connections("tcp"):
                    return proc
    return None


def test_a_killed_provisioner_s_instances_are_adopted_by_the_next_one(
    provisioner: RunningService,
    client: RegistryClient,
    trained_examples: Path,
    start_service: ServiceStarter,
) -> None:
    """kill -9 of the provisioner: its instances keep serving and the next one takes them
    over (no restart, no duplicate), then watches, replaces and stops them as its own."""
    deploy(client, trained_examples, sets=("instance_count=2",))
    doc = wait_for(lambda: settled(client), "blue to settle", deadline=180)
    assert doc.meta.provisioning_state is ProvisioningState.succeeded
    before = {i.id: i.address for i in doc.instances}
    os.kill(provisioner.process.pid, signal.SIGKILL)  # its instances keep running, orphaned
    log = provisioner.process.log_path
    start_service("provisioner")  # logs to the same file, after a "starting" line

    def adopted() -> set[str]:
        since_start = log.read_text().rsplit("starting provisioner", 1)[-1].splitlines()
        lines = [json.loads(line) for line in since_start if line.startswith("{")]
        return {line["instance"] for line in lines if line.get("event") == "instance_adopted"}

    wait_for(lambda: adopted() == set(before) or None, "the new provisioner to adopt both")
    now = state(client)
    assert {i.id: i.address for i in now.instances} == before
    assert all(i.ready for i in now.instances)
    assert now.meta.provisioning_state is ProvisioningState.succeeded
    for address in before.values():
        assert len(score(provisioner, address)) == 2

    # It watches the adopted processes: one killed is replaced.
    victim_id, victim_address = next(iter(before.items()))
    victim = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == int(victim_address.rsplit(":", 1)[1])
        and c.status == psutil.CONN_LISTEN and c.pid
    )  # fmt: skip
    os.kill(victim, signal.SIGKILL)

    def replaced() -> OnlineDeployment | None:
        d = state(client)
        ready = {i.id for i in d.instances if i.ready}
        return d if len(ready) == 2 and victim_id not in ready else None

    wait_for(replaced, "the killed adopted instance to be replaced", deadline=120)

    # And it stops them: deleting the deployment leaves nothing answering.
    client.delete_online_deployment("my-endpoint", "blue")
    for address in before.values():
        wait_for(lambda a=address: not _answers(a), f"nothing to answer at {address}")


def _answers(address: str) -> bool:
    try:
        httpx.get(f"http://{address}/", timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


def test_kubernetes_deployment_without_a_cluster_fails_saying_so(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path
) -> None:
    endpoint = load_online_endpoint(
        trained_examples / "online/endpoint.yml", ["compute=azureml:k8s-cluster"], name="k8s-ep"
    ).spec
    client.create_online_endpoint(endpoint)
    spec = load_online_deployment(
        trained_examples / "online/blue-deployment.yml",
        client.upload,
        ["type=kubernetes", "environment=null"],
        endpoint_name="k8s-ep",
    ).spec
    client.create_online_deployment(spec)
    doc = wait_for(
        lambda: (
            (d := client.get_online_deployment("k8s-ep", "blue")).meta.provisioning_state
            is ProvisioningState.failed
            and d
        ),
        "Failed",
    )
    assert "set SLUICE_KUBECONFIG" in doc.meta.status_message


async def test_status_transitions_are_published(
    provisioner: RunningService, client: RegistryClient, trained_examples: Path, nats_broker: Any
) -> None:
    import asyncio
    import contextlib
    import json as _json

    from nats.js.api import ConsumerConfig, DeliverPolicy

    await asyncio.to_thread(deploy, client, trained_examples)
    await asyncio.to_thread(wait_for, lambda: settled(client), "blue to settle")
    settings = provisioner.settings
    sub = await nats_broker.connection.jetstream().pull_subscribe(
        f"{settings.events_subject_prefix}.>",
        durable="transitions-test",
        stream=settings.events_stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    kinds: list[str] = []
    deadline = asyncio.get_running_loop().time() + 30
    # The events follow the status writes through the outbox's relay: wait for the last one.
    while "deployment.ready" not in kinds and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):
            for msg in await sub.fetch(50, timeout=1):
                body = _json.loads(msg.data)
                if body["data"].get("name") == "blue":
                    kinds.append(body["type"].removeprefix("sluice."))
    assert kinds[0] == "deployment.created"
    assert kinds.index("deployment.provisioning") < kinds.index("instance.ready")
    assert kinds.index("instance.ready") < kinds.index("deployment.ready")


def test_target_utilization_scales_out_under_load_and_back_in(
    start_service: ServiceStarter,
    registry: RunningService,
    envs_dir: Path,
    client: RegistryClient,
    trained_examples: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    # The scale-in stabilization window (the HPA's, 300 s by default) short enough for a test.
    monkeypatch.setenv("SLUICE_SCALE_IN_STABILIZATION_S", "5")
    start_service.settings = start_service.settings.model_copy(update={"envs_dir": envs_dir})
    provisioner = start_service("provisioner")

    script = trained_examples / "online/model-1/onlinescoring/score.py"
    script.write_text(
        "import time\n\ndef init():\n    pass\n\n"
        "def run(raw):\n    started = time.perf_counter()\n"
        "    while time.perf_counter() - started < 0.02:\n        pass\n    return 1\n"
    )
    deploy(
        client,
        trained_examples,
        sets=(
            "scale_settings.type=target_utilization",
            "scale_settings.min_instances=1",
            "scale_settings.max_instances=2",
            "scale_settings.target_utilization_percentage=30",
            "scale_settings.polling_interval=1",
            "request_settings.max_concurrent_requests_per_instance=1",
        ),
    )

    # One instance: its start-up (imports, init()) is no load. Before CPU_SETTLE_S, the
    # first reading after ready covered the last second of start-up and could scale a fresh
    # deployment out (seen as "too many values to unpack" here); a start-up decision would
    # also show in the decisions checked at the end.
    doc = wait_for(lambda: settled(client), "blue to settle")
    assert len(doc.instances) == 1, f"start-up scaled blue out: {doc.instances}"
    (first,) = doc.instances
    stop = threading.Event()

    secret = gateway_auth.secret_for(provisioner.settings.secret_key or "", "my-endpoint", "blue")

    def load() -> None:
        with httpx.Client(headers={gateway_auth.HEADER: secret}) as http:
            while not stop.is_set():
                http.post(f"http://{first.address}/score", content=b"{}", timeout=5)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for(
            lambda: len([i for i in state(client).instances if i.ready]) == 2,
            "a second instance under load",
            deadline=60,
        )
    finally:
        stop.set()
        worker.join(timeout=10)
    wait_for(lambda: len(state(client).instances) == 1, "scale back in once idle", deadline=60)
    assert state(client).meta.provisioning_state is ProvisioningState.succeeded
    # Both decisions were published as the autoscale engine's are, with the observed CPU.
    decisions = wait_for(
        lambda: (e := scaled_events(provisioner.settings)) and e[-1]["new_count"] == 1 and e,
        "the scale-in decision published",
        deadline=30,
    )
    # Exactly out under load and in once idle: no decision on start-up CPU.
    assert [(d["old_count"], d["new_count"]) for d in decisions] == [(1, 2), (2, 1)]
    out = decisions[0]
    assert out["name"] == "scale_settings" and out["metric"] == "CpuUtilizationPercentage"
    assert out["rule"] == "CpuUtilizationPercentage target 30%" and out["value"] > 30 * 1.1
    assert decisions[-1]["value"] < 30


def test_landlocked_instances_serve_and_reach_only_their_own_files(
    start_service: ServiceStarter,
    client: RegistryClient,
    envs_dir: Path,
    trained_examples: Path,
) -> None:
    """SLUICE_LANDLOCK (compose and Kubernetes, where instances share the provisioner's uid):
    an instance starts cold in a Landlock sandbox (sluice.common.confine), loads its model
    and code and serves, and a file every user may read is refused to its score.py."""
    start_service.settings = start_service.settings.model_copy(
        update={"envs_dir": envs_dir, "landlock": True}
    )
    provisioner = start_service("provisioner")
    with traversable_dir("sluice-probe-") as folder:
        probe = folder / "readable-by-all.txt"
        probe.write_text("outside the sandbox\n")
        probe.chmod(0o644)  # the control: any uid reaches and reads it
        script = trained_examples / "online/model-1/onlinescoring/score.py"
        script.write_text(
            script.read_text()
            + "\n\n_scored = run\n\n\ndef run(raw):\n"
            + "    try:\n"
            + f"        seen = open({str(probe)!r}).read().strip()\n"
            + "    except PermissionError:\n"
            + "        seen = 'refused'\n"
            + "    return [*_scored(raw), seen]\n"
        )
        deploy(client, trained_examples)
        doc = wait_for(lambda: settled(client), "blue to settle", deadline=180)
        assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
        (instance,) = doc.instances
        *predictions, seen = score(provisioner, instance.address)
    assert len(predictions) == 2 and seen == "refused"
    log = next((provisioner.settings.state_dir / "instances").rglob(f"{instance.id}.log"))
    assert "confined with Landlock" in log.read_text()


def test_egress_disabled_keeps_a_deployments_code_off_the_network(
    provisioner: RunningService,
    registry: RunningService,
    client: RegistryClient,
    trained_examples: Path,
) -> None:
    """`egress_public_network_access: disabled` (Azure's field): the instance starts cold
    under confine.py's network rules, serves on its own port, and its score.py cannot open a
    TCP connection, here to the registry's gRPC port on loopback. The control: the same
    script in a deployment with egress enabled (the default) connects."""
    host, port = registry.address.rsplit(":", 1)
    script = trained_examples / "online/model-1/onlinescoring/score.py"
    script.write_text(
        script.read_text()
        + "\n\nimport socket\n_scored = run\n\n\ndef run(raw):\n"
        + "    try:\n"
        + f"        socket.create_connection(({host!r}, {port}), timeout=5).close()\n"
        + "        seen = 'connected'\n"
        + "    except OSError as exc:\n"
        + "        seen = type(exc).__name__\n"
        + "    return [*_scored(raw), seen]\n"
    )
    deploy(client, trained_examples, "blue", ("egress_public_network_access=disabled",))
    deploy(client, trained_examples, "green")
    for name, expected in (("blue", "PermissionError"), ("green", "connected")):
        doc = wait_for(lambda n=name: settled(client, n), f"{name} to settle", deadline=180)
        assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
        (instance,) = doc.instances
        *predictions, seen = score(provisioner, instance.address, name)
        assert len(predictions) == 2 and seen == expected, name
    assert state(client, "blue").spec.egress_public_network_access == "disabled"
    log = next((provisioner.settings.state_dir / "instances").rglob(f"{instance.id}.log"))
    blue = state(client, "blue").instances[0]
    blue_log = next((provisioner.settings.state_dir / "instances").rglob(f"{blue.id}.log"))
    assert f"TCP bind [{blue.address.rsplit(':', 1)[1]}], connect []" in blue_log.read_text()
    assert "confined with Landlock" not in log.read_text()  # green: no sandbox at all
