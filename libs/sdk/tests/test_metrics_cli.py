"""The metrics CLI's pieces that need no server: durations, alert-rule YAML, the live table."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from sluice.sdk.cli.metrics_cmds import live_table, row_of, sparkline
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
