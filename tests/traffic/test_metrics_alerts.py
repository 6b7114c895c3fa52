"""Live metrics under load, through the real gateway: an alert rule fires while requests
flow and resolves after, both as CloudEvents on NATS; snapshots go out on NATS and
Prometheus reads Azure's metric names. Metrics buckets are 5 s wide here (60 s in
production) so that windows pass quickly."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from faststream.nats import NatsBroker

from sluice.common.events import parse_envelope
from sluice.common.supervisor import Supervisor, free_port
from sluice.sdk.client import SluiceError
from sluice.sdk.metrics import MetricsClient, load_alert_rule
from sluice.testing.plugin import EnvoyGateway, ServiceStarter
from sluice.testing.traffic import GatewayPorts, Upstream, World, eventually, start_controller

pytestmark = pytest.mark.integration
KEY = "primary-key-1"
RULE = """\
name: busy-alerted
description: more than 120 requests per minute (10 per 5 s bucket)
metric: RequestsPerMinute
scope: {endpoint: alerted}
aggregation: max
operator: ">"
threshold: 120
window: 10s
for: 1s
"""


async def last_event(broker: NatsBroker, stream: str, subject: str) -> dict | None:  # type: ignore[type-arg]
    try:
        raw = await broker.connection.jetstream().get_last_msg(stream, subject)
    except Exception:
        return None
    return parse_envelope(raw.data).model_dump(mode="json")


async def test_an_alert_fires_under_load_and_resolves_after(
    start_service: ServiceStarter,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
    world: World,
    nats_broker: NatsBroker,
    upstreams: Callable[[str], Upstream],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    prometheus_port = free_port()
    monkeypatch.setenv("SLUICE_METRICS_BUCKET_S", "5")
    monkeypatch.setenv("SLUICE_METRICS_SNAPSHOT_INTERVAL_S", "1")
    monkeypatch.setenv("SLUICE_PROMETHEUS_PORT", str(prometheus_port))
    metrics = start_service("metrics", envoy=envoy_gateway)
    monkeypatch.delenv("SLUICE_PROMETHEUS_PORT")
    traffic = start_controller(
        metrics.settings,
        supervisor,
        envoy_gateway,
        gateway_ports,
        {"SLUICE_TRAFFIC_ACCESS_LOG": "true"},
    )
    settings = metrics.settings
    blue = upstreams("blue")
    await world.deployment("alerted", "blue", [blue.address])
    await world.endpoint("alerted", traffic={"blue": 100})
    await asyncio.to_thread(
        eventually, lambda: traffic.score("alerted", KEY)[0], lambda s: s == 200
    )

    rule_file = tmp_path / "rule.yml"
    rule_file.write_text(RULE)
    client = MetricsClient(metrics.address, settings.admin_token or "")
    # Bad rules: each a clear error, and nothing created.
    for text, code, says in (
        (RULE.replace("RequestsPerMinute", "Requests"), "INVALID_ARGUMENT", "unknown metric"),
        (RULE.replace("endpoint: alerted", "endpoint: nope"), "NOT_FOUND", "'nope'"),
        (RULE.replace("window: 10s", "window: 1s"), "INVALID_ARGUMENT", "granularity"),
    ):
        rule_file.write_text(text)
        with pytest.raises(SluiceError) as bad:
            client.create_alert_rule(load_alert_rule(rule_file))
        assert (bad.value.code, says in str(bad.value)) == (code, True), str(bad.value)
    assert client.list_alert_rules() == []
    rule_file.write_text(RULE)
    created = client.create_alert_rule(load_alert_rule(rule_file))
    assert (created.window_s, created.for_s, created.state) == (10, 1, "ok")

    root = settings.events_subject_prefix
    snapshots = await nats_broker.connection.subscribe(
        root.rsplit(".", 1)[0] + ".metrics.alerted.blue"
    )
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            traffic.score("alerted", KEY)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 40
        fired = None
        while fired is None and time.monotonic() < deadline:
            fired = await last_event(nats_broker, settings.events_stream, f"{root}.alert.fired")
            await asyncio.sleep(0.2)
        snapshot = json.loads((await snapshots.next_msg(timeout=10)).data)
    finally:
        await snapshots.unsubscribe()  # left open, the broker's stop drains it for 30 s
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert fired is not None, "no alert.fired event under load"
    assert fired["type"] == "sluice.alert.fired" and fired["subject"] == "busy-alerted"
    assert fired["data"]["value"] > 120 and fired["data"]["metric"] == "RequestsPerMinute"
    assert [r.state for r in client.list_alert_rules()] == ["firing"]
    assert snapshot["endpoint"] == "alerted" and snapshot["deployment"] == "blue"
    assert snapshot["metrics"]["RequestsPerMinute"] > 0

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus_port}/metrics") as page:
            return str(page.read().decode())

    text = await asyncio.to_thread(scrape)
    assert 'azureml_requests_per_minute{deployment="blue",endpoint="alerted"}' in text
    assert "sluice_metrics_access_log_entries_total" in text
    assert 'sluice_grpc_server_handled_total{code="OK",method="/sluice.v1.Metrics/' in text

    deadline = time.monotonic() + 40
    resolved = None
    while resolved is None and time.monotonic() < deadline:
        resolved = await last_event(nats_broker, settings.events_stream, f"{root}.alert.resolved")
        await asyncio.sleep(0.2)
    assert resolved is not None, "no alert.resolved event after the load"
    assert resolved["data"]["rule"] == "busy-alerted"
    assert resolved["data"]["value"] is None or resolved["data"]["value"] <= 120
    assert [r.state for r in client.list_alert_rules()] == ["ok"]
    client.delete_alert_rule("busy-alerted")
    with pytest.raises(SluiceError, match="does not exist"):
        client.delete_alert_rule("busy-alerted")
    client.close()
