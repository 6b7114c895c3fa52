"""The metrics CLI's pieces that need no server: durations, alert-rule YAML, the live table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rich.console import Console

from sluice.sdk.cli import metrics_cmds
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.metrics_cmds import live_table, row_of, sparkline
from sluice.sdk.cli.output import OutputFormat
from sluice.sdk.client import SluiceError
from sluice.sdk.metrics import load_alert_rule, parse_duration
from sluice.v1 import metrics_pb2


def test_durations_as_azure_writes_them() -> None:
    assert [parse_duration(t) for t in ("90s", "15m", "24h", "1d", "PT5M", "P1DT1H", "30")] == [
        90, 900, 86400, 86400, 300, 90000, 30,
    ]  # fmt: skip
    with pytest.raises(SluiceError, match="--since 'yesterday' is not a duration"):
        parse_duration("yesterday", "--since")


def test_alert_rule_yaml_and_its_errors(tmp_path: Path) -> None:
    rule = tmp_path / "rule.yml"
    rule.write_text(
        "name: slow\nmetric: RequestLatency_P99\nscope: {endpoint: shop, deployment: blue}\n"
        "aggregation: max\noperator: '>'\nthreshold: 250\nwindow: 5m\nfor: 1m\n"
    )
    message = load_alert_rule(rule)
    assert (message.endpoint_name, message.deployment_name) == ("shop", "blue")
    assert (message.window_s, message.for_s, message.threshold) == (300, 60, 250.0)
    rule.write_text(
        "name: x\nmetric: M\nscope: {endpoint: e}\noperator: '>'\nthreshold: 1\nwhen: 2\n"
    )
    with pytest.raises(SluiceError, match="unknown field"):
        load_alert_rule(rule)
    rule.write_text("name: x\nmetric: M\nscope: {}\noperator: '>'\nthreshold: 1\n")
    with pytest.raises(SluiceError, match=r"scope\.endpoint is required"):
        load_alert_rule(rule)


def test_live_table_shows_sparklines_per_deployment() -> None:
    reply = metrics_pb2.EndpointMetrics(endpoint_name="shop")
    for minute, rpm in enumerate((10.0, 40.0, 80.0)):
        point = reply.points.add(deployment_name="blue", requests_per_minute=rpm)
        point.latency_p99_ms = 5.0 * (minute + 1)
        point.time.FromSeconds(1_700_000_040 + 60 * minute)
        point.responses_by_status_class["5xx"] = minute
        point.active_connections = minute + 1
    assert sparkline([10.0, 40.0, 80.0]) == "▁▄█"
    console = Console(record=True, width=120)
    console.print(live_table(reply, 60))
    text = console.export_text()
    assert "blue" in text and "▁▄█" in text and "80.0" in text
    assert row_of(reply.points[-1])["5xx"] == 2
    assert row_of(reply.points[-1])["connections"] == 3  # ConnectionsActive


def test_live_table_s_now_is_the_newest_step_that_has_ended() -> None:
    # The step still filling (started 10 s ago, 2 requests so far) would read as a drop.
    reply = metrics_pb2.EndpointMetrics(endpoint_name="shop")
    start = int(time.time()) // 60 * 60 - 60
    for at, rpm in ((start - 60, 600.0), (start, 610.0), (int(time.time()) - 10, 12.0)):
        point = reply.points.add(deployment_name="blue", requests_per_minute=rpm)
        point.time.FromSeconds(at)
    console = Console(record=True, width=120)
    console.print(live_table(reply, 60))
    row = next(line for line in console.export_text().splitlines() if "blue" in line)
    assert "610.0" in row and "12.0" not in row


class FakeMetrics:
    """The metrics service's answers for an endpoint with a managed and a kubernetes
    deployment (the service names the latter: nothing records its usage or its hours)."""

    def __init__(self) -> None:
        self.reply = metrics_pb2.EndpointMetrics(
            endpoint_name="shop", step_s=60, no_usage_deployments=["k8s"]
        )
        for deployment, instances in (("blue", 2), ("k8s", 0)):
            point = self.reply.points.add(deployment_name=deployment, requests=60)
            point.time.FromSeconds(1_700_000_040)
            point.cpu_utilization_percent = 40.0 if instances else 0.0
            point.instance_count = instances
        self.report = metrics_pb2.CostReport(
            currency="USD", total=0.586, no_usage_deployments=["shop/k8s"]
        )
        self.report.lines.add(
            deployment_name="blue", instance_type="Standard_DS3_v2", instance_hours=2.0,
            hourly_price=0.293, cost=0.586, kind="online",
        )  # fmt: skip

    def __enter__(self) -> FakeMetrics:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def endpoint_metrics(self, *_: object, **__: object) -> metrics_pb2.EndpointMetrics:
        return self.reply

    def costs(self, *_: object, **__: object) -> metrics_pb2.CostReport:
        return self.report


def test_kubernetes_deployments_say_no_usage_data_instead_of_zeros(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeMetrics()
    monkeypatch.setattr(metrics_cmds, "metrics_client", lambda: fake)
    metrics_cmds.metrics(
        name="shop", deployment="", since="15m", step="1m", watch=False, output=OutputFormat.json
    )
    out, err = capsys.readouterr()
    blue, k8s = json.loads(out)
    assert (blue["cpu_%"], blue["instances"]) == (40.0, 2)
    assert (k8s["requests"], k8s["cpu_%"], k8s["memory_%"], k8s["instances"]) == (
        60, None, None, None
    )  # fmt: skip
    assert "no usage data for kubernetes deployments (CPU, memory, instances): k8s" in err

    metrics_cmds.show_costs(name="shop", deployment="", since="24h", output=OutputFormat.json)
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert [d["deployment"] for d in data["deployments"]] == ["blue"]
    assert data["no_usage_data"] == ["k8s"]
    assert "no usage data for kubernetes deployments (not costed): k8s" in err
    metrics_cmds.show_costs(name="shop", deployment="", since="24h", output=OutputFormat.table)
    assert "no usage data for kubernetes deployments" in capsys.readouterr().err

    console = Console(record=True, width=160)
    console.print(metrics_cmds.live_table(fake.reply, 60))
    text = console.export_text()
    assert "no usage data for kubernetes deployments (instances): k8s" in text


def test_a_window_or_step_of_nothing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []
    monkeypatch.setattr(metrics_cmds, "metrics_client", lambda: asked.append(1))
    for since, step in (("15m", "0"), ("0s", "1m")):
        with pytest.raises(CliError, match="must be longer than 0s"):
            metrics_cmds.metrics(
                name="shop", deployment="", since=since, step=step, watch=False,
                output=OutputFormat.json,
            )  # fmt: skip
    assert asked == []  # the service was not asked (it read 0 as its default)
