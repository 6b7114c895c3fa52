"""Costs from real instances: a deployment runs two instances for a measured interval and
costs price x time, before and after a restart of the metrics service; its usage samples
show up as two instances; the CLI prints the same figure; bad input is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from sluice.common.resources import ProvisioningState
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.metrics import MetricsClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.plugin import RunningService, ServiceStarter
from sluice.testing.wait import wait_for
from sluice.v1 import metrics_pb2, metrics_pb2_grpc

# Starting two scikit-learn instances takes a minute on a loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]
PRICE = 0.293  # Standard_DS3_v2 (services/provisioner/.../instance_types.yaml)


def costs(address: str, token: str, start: float, end: float) -> metrics_pb2.CostReport:
    request = metrics_pb2.GetCostsRequest(endpoint_name="my-endpoint")
    request.window.start.FromNanoseconds(int(start * 1e9))
    request.window.end.FromNanoseconds(int(end * 1e9))
    with grpc.insecure_channel(address) as channel:
        stub = metrics_pb2_grpc.MetricsStub(channel)
        return stub.GetCosts(request, metadata=(("authorization", f"Bearer {token}"),))


def test_two_instances_cost_price_times_time_across_a_restart(
    start_service: ServiceStarter,
    provisioner: RunningService,
    client: RegistryClient,
    trained_examples: Path,
) -> None:
    metrics = start_service("metrics")
    token = metrics.settings.admin_token or ""
    client.create_online_endpoint(
        load_online_endpoint(trained_examples / "online/endpoint.yml").spec
    )
    spec = load_online_deployment(
        trained_examples / "online/blue-deployment.yml",
        client.upload,
        ["environment=null", "instance_count=2"],
    ).spec
    created = time.time()
    client.create_online_deployment(spec)
    doc = wait_for(
        lambda: (
            (d := client.get_online_deployment("my-endpoint", "blue")).meta.provisioning_state
            is ProvisioningState.succeeded
            and d
        ),
        "blue to succeed",
        deadline=240,
    )
    ready = time.time()
    assert len([i for i in doc.instances if i.ready]) == 2

    # The usage samples arrive and count two instances (the provisioner samples every 5 s).
    with MetricsClient(metrics.address, token) as mc:

        def instances() -> int:
            try:
                reply = mc.endpoint_metrics("my-endpoint", "blue", since_s=300)
            except SluiceError:
                return 0
            return max((p.instance_count for p in reply.points), default=0)

        assert wait_for(lambda: instances() == 2, "two instances in the usage samples", 30)

    deleting = time.time()
    client.delete_online_deployment("my-endpoint", "blue")

    def stopped() -> bool:
        report = costs(metrics.address, token, created - 60, time.time())
        return bool(report.lines) and all(line.running_instances == 0 for line in report.lines)

    wait_for(stopped, "both instances to stop")
    gone = time.time()

    window = (created - 60, gone + 1)
    before = costs(metrics.address, token, *window)
    [line] = before.lines
    assert (line.deployment_name, line.instance_type, line.kind) == (
        "blue",
        "Standard_DS3_v2",
        "online",
    )
    assert line.hourly_price == pytest.approx(PRICE)
    seconds = line.instance_hours * 3600
    # Both instances ran at least from "Succeeded" to the delete call and at most from the
    # create call until both were seen stopped; each side within a second's rounding.
    assert 2 * (deleting - ready) - 1 <= seconds <= 2 * (gone - created) + 1, seconds
    assert line.cost == pytest.approx(PRICE * seconds / 3600)
    assert before.total == pytest.approx(line.cost)
    assert before.currency == "USD"

    # A restart of the aggregator: the same window costs the same.
    start_service.stop(metrics)
    metrics = start_service("metrics")
    after = costs(metrics.address, token, *window)
    assert after.total == pytest.approx(before.total, rel=1e-9)

    # The CLI: endpoint total plus one line per deployment; bad input is one clear line.
    env = {
        **os.environ,
        "SLUICE_METRICS_ADDRESS": metrics.address,
        "SLUICE_ADMIN_TOKEN": token,
        "NO_COLOR": "1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sluice.sdk.cli", "online-endpoint", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    shown = cli("show-costs", "--name", "my-endpoint", "--since", "1h", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["currency"] == "USD"
    assert [d["deployment"] for d in data["deployments"]] == ["blue"]
    assert data["total"] == pytest.approx(before.total, abs=1e-4)
    one = cli("show-costs", "-n", "my-endpoint", "-d", "blue", "--since", "1h", "-o", "json")
    assert [d["deployment"] for d in json.loads(one.stdout)["deployments"]] == ["blue"]
    other = cli("show-costs", "-n", "my-endpoint", "-d", "green", "--since", "1h", "-o", "json")
    assert other.returncode == 1 and "'green' of endpoint 'my-endpoint' does not exist" in (
        other.stderr
    )

    unknown = cli("show-costs", "--name", "no-such-endpoint")
    assert unknown.returncode == 1
    assert "endpoint 'no-such-endpoint' does not exist" in unknown.stderr
    bad_since = cli("metrics", "--name", "my-endpoint", "--since", "yesterday")
    assert bad_since.returncode == 1
    assert "--since 'yesterday' is not a duration" in bad_since.stderr
