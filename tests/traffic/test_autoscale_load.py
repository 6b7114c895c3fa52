"""Autoscaling end to end, through the real gateway: real load through Envoy makes the
metrics service's autoscale setting scale a real deployment out (a requests-per-minute
rule), never past its maximum, with no failed request; once the load stops it scales
back in; a fixed-date profile takes over at its start; scaling in under steady load fails
no request; every decision is stored (shown
by `show`) and published as `sluice.autoscale.scaled`. Metrics buckets are 5 s here
(60 s in production) so that windows pass quickly."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from sluice.common.supervisor import Supervisor
from sluice.sdk.autoscale import AutoscaleClient, make_profile, make_rule
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.load import SteadyLoad
from sluice.testing.plugin import EnvoyGateway, RunningService, ServiceStarter
from sluice.testing.traffic import GatewayPorts, start_controller
from sluice.testing.wait import wait_for
from sluice.v1 import autoscale_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
ENDPOINT = "my-endpoint"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
OUT = "RequestsPerMinute > 300 avg 10s"  # > 25 requests in a 5 s bucket
IN = "RequestsPerMinute < 30 avg 10s"


def last_scaled(settings: Any) -> dict[str, Any] | None:
    async def read() -> dict[str, Any] | None:
        connection = await nats.connect(settings.nats_url)
        try:
            subject = f"{settings.events_subject_prefix}.autoscale.scaled"
            raw = await connection.jetstream().get_last_msg(settings.events_stream, subject)
            return dict(json.loads(raw.data))
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await connection.close()

    return asyncio.run(read())


def test_metric_rules_scale_out_and_in_and_a_schedule_takes_over(
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
        online / "blue-deployment.yml",
        client.upload,
        [
            "environment=null",
            "instance_count=1",
            "request_settings.max_concurrent_requests_per_instance=4",
        ],
    ).spec
    client.create_online_deployment(spec)

    def ready(count: int) -> bool:
        doc = client.get_online_deployment(ENDPOINT, "blue")
        return len(doc.instances) == count and all(i.ready for i in doc.instances)

    wait_for(lambda: ready(1), "blue to serve", deadline=240)
    client.set_traffic(ENDPOINT, {"blue": 100})
    key = client.get_credentials(ENDPOINT).primary_key
    wait_for(lambda: traffic.score(ENDPOINT, key, body=BODY)[0] == 200, "blue to be routed")

    autoscale = AutoscaleClient(metrics.address, metrics.settings.admin_token or "")
    setting = autoscale_pb2.AutoscaleSetting(
        name="blue-autoscale", endpoint_name=ENDPOINT, deployment_name="blue", enabled=True
    )
    default = make_profile("default", 1, 1, 2)
    for condition, scale in ((OUT, ("out", "1")), (IN, ("in", "1"))):
        default.rules.append(make_rule(condition, scale, cooldown_min=0.1, timegrain="avg 5s"))
    setting.profiles.append(default)
    autoscale.create(setting)

    def capacity(count: int) -> Any:
        shown = autoscale.get("blue-autoscale")
        return shown if shown.capacity == count else None

    host = traffic.host(ENDPOINT)
    with SteadyLoad(gateway_ports.http, host, key, BODY, threads=2) as load:
        load.wait_requests(50)
        started = time.monotonic()
        out = wait_for(lambda: capacity(2), "a scale-out decision under load", deadline=60)
        decided = time.monotonic()
        wait_for(lambda: ready(2), "the second instance to serve", deadline=60)
        print(
            f"load -> decision {decided - started:.1f}s, decision -> 2 ready "
            f"{time.monotonic() - decided:.1f}s"
        )
        # The out-rule keeps firing; the maximum holds (cool-down 6 s, evaluated every 1 s).
        before = load.total
        wait_for(lambda: load.total > before + 200, "more load at the maximum", deadline=30)
        failures = load.failures()
    assert failures == [], failures[:5]
    [decision] = [d for d in out.decisions if d.new_count == 2]
    assert (decision.reason, decision.rule, decision.metric) == (
        "rule",
        f"{OUT} -> out 1",
        "RequestsPerMinute",
    )
    assert decision.has_value and decision.value > 300 and decision.old_count == 1
    assert autoscale.get("blue-autoscale").capacity == 2

    shown = wait_for(lambda: capacity(1), "a scale-in decision once idle", deadline=60)
    wait_for(lambda: ready(1), "back to one instance", deadline=60)
    assert shown.decisions[0].rule == f"{IN} -> in 1" and shown.decisions[0].value < 30
    assert all(1 <= d.new_count <= 2 for d in shown.decisions)
    event = last_scaled(metrics.settings)
    assert event is not None and event["subject"] == f"{ENDPOINT}/blue"
    assert event["data"]["old_count"] == 2 and event["data"]["new_count"] == 1
    assert event["data"]["rule"] == f"{IN} -> in 1"

    # A fixed-date profile takes over at its start (exactly 2 instances), on the real clock.
    start = datetime.now(UTC) + timedelta(seconds=5)
    current = autoscale.get("blue-autoscale")
    current.profiles.append(
        make_profile(
            "burst", 2, 2, 2, start=start.isoformat(), end=(start + timedelta(hours=1)).isoformat()
        )
    )
    autoscale.update(current)
    burst = wait_for(lambda: capacity(2), "the burst profile to take over", deadline=60)
    assert datetime.now(UTC) >= start
    assert (burst.active_profile, burst.decisions[0].reason) == ("burst", "bounds")
    wait_for(lambda: ready(2), "two instances in the burst", deadline=60)

    # Scaling in under steady load fails no request either: the burst ends early and the
    # default profile, now at most 1, takes the count back down while clients score.
    with SteadyLoad(gateway_ports.http, host, key, BODY, threads=2) as load:
        load.wait_requests(50)
        current = autoscale.get("blue-autoscale")
        del current.profiles[1]
        current.profiles[0].max_count = 1
        autoscale.update(current)
        wait_for(lambda: capacity(1), "the scale-in decision under load", deadline=60)
        wait_for(lambda: ready(1), "one instance left under load", deadline=60)
        load.wait_requests(100)
        failures = load.failures()
    assert failures == [], failures[:5]

    # Deleted: the deployment's own instance_count (1) applies again.
    autoscale.delete("blue-autoscale")
    assert traffic.score(ENDPOINT, key, body=BODY)[0] == 200
    autoscale.close()
