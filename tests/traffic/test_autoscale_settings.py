"""Autoscale settings through the CLI against a real metrics service: az's flags and
condition grammar, the YAML form, rules and profiles edited in place, and every bad
input refused with a clear error and nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.common.azure_ids import resource_id
from sluice.testing.cli import Cli
from sluice.testing.plugin import ServiceStarter
from sluice.testing.traffic import World

pytestmark = pytest.mark.integration
DEPLOYMENT_ID = resource_id("onlineEndpoints", "shop", "deployments", "blue")
ENDPOINT_ID = resource_id("onlineEndpoints", "shop")
YAML = f"""\
name: shop-yaml
resource: {resource_id("onlineEndpoints", "shop", "deployments", "green")}
profiles:
  - name: default
    capacity: {{minimum: 1, default: 1, maximum: 4}}
    rules:
      - condition: CpuUtilizationPercentage > 70 avg 10m
        scale: out 2
        cooldown: 1m
      - condition: RequestLatency_P99 > 250 avg 5m
        scale: out 1
        resource: {ENDPOINT_ID}
      - condition: RequestsPerMinute > 300 avg 5m
        scale: out 1
        divide_per_instance: true
  - name: weekend
    capacity: {{minimum: 2, default: 2, maximum: 2}}
    timezone: Pacific Standard Time
    recurrence: {{days: [sat, sun]}}
"""


async def test_autoscale_settings_from_the_command_line(
    start_service: ServiceStarter,
    world: World,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SLUICE_METRICS_BUCKET_S", "5")
    metrics = start_service("metrics")
    monkeypatch.setenv("SLUICE_METRICS_ADDRESS", metrics.address)
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", metrics.settings.admin_token or "")
    await world.endpoint("shop")
    await world.deployment("shop", "blue", ["127.0.0.1:9"])
    await world.deployment("shop", "green", ["127.0.0.1:9"])

    # Refused before anything is stored.
    setting = ("monitor", "autoscale", "create", "--resource", DEPLOYMENT_ID, "-n", "shop")
    assert "minimum 3 is greater than maximum 2" in cli.fails(
        *setting, "--count", "3", "--min-count", "3", "--max-count", "2"
    )
    assert "not an online endpoint or deployment id" in cli.fails(
        "monitor", "autoscale", "create", "--resource", "blue", "--count", "1"
    )
    assert "must be an online deployment's id" in cli.fails(
        "monitor", "autoscale", "create", "--resource", ENDPOINT_ID, "--count", "1"
    )
    missing = resource_id("onlineEndpoints", "shop", "deployments", "nope")
    assert "deployment 'nope' of endpoint 'shop' does not exist" in cli.fails(
        "monitor", "autoscale", "create", "--resource", missing, "--count", "1"
    )
    assert cli.json("monitor", "autoscale", "list") == []
    # A deployment's decisions (show --resource): bad ids and missing deployments refused.
    show = ("monitor", "autoscale", "show")
    assert "either --name" in cli.fails(*show)
    assert "either --name" in cli.fails(*show, "-n", "shop", "--resource", DEPLOYMENT_ID)
    assert "must be an online deployment's id" in cli.fails(*show, "--resource", ENDPOINT_ID)
    assert "deployment 'nope' of endpoint 'shop' does not exist" in cli.fails(
        *show, "--resource", missing
    )
    assert cli.json(*show, "--resource", DEPLOYMENT_ID) == {
        "target": "shop/blue",
        "autoscaleSetting": None,
        "scaleSettings": {"type": "default", "minInstances": 1},
        "decisions": [],
    }

    created = cli.json(*setting, "--count", "2", "--min-count", "1", "--max-count", "5")
    assert created["targetResourceUri"] == DEPLOYMENT_ID
    assert created["profiles"] == [
        {
            "name": "default",
            "capacity": {"minimum": 1, "default": 2, "maximum": 5},
            "rules": [],
            "timezone": "UTC",
        }
    ]
    assert "already exists" in cli.fails(*setting, "--count", "2")
    assert "already has an autoscale setting" in cli.fails(
        "monitor", "autoscale", "create", "--resource", DEPLOYMENT_ID, "-n", "other", "--count", "1"
    )

    rule = ("monitor", "autoscale", "rule", "create", "--autoscale-name", "shop")
    out = cli.json(
        *rule, "--condition", "CpuUtilizationPercentage > 70 avg 5m", "--scale", "out", "2"
    )
    assert out == {
        "index": 0,
        "condition": "CpuUtilizationPercentage > 70 avg 5m",
        "scale": "out 2",
        "cooldown": "5m",
        "timegrain": "avg 60s",
        "metricSource": "(target)",
        "dividePerInstance": False,
    }
    cli.json(
        *rule,
        "--condition",
        "RequestLatency_P99 > 300 max 10m",
        "--scale",
        "out",
        "1",
        "--resource",
        ENDPOINT_ID,
        "--cooldown",
        "2",
    )
    cli.json(*rule, "--condition", "CpuUtilizationPercentage < 20 avg 10m", "--scale", "in", "1")
    # Bad rules: a clear error each, and the setting keeps its three rules.
    for condition, scale, says in (
        ("CpuUtilizationPercentage >> 70 avg 5m", "out 1", "does not read as"),
        ("CpuUtilizationPercentage > 70 median 5m", "out 1", "aggregation 'median'"),
        ("Cpu > 70 avg 5m", "out 1", "unknown metric 'Cpu' for a deployment"),
        ("CpuUtilizationPercentage > 70 avg 30s", "out 1", "at least the time grain (60s)"),
        ("CpuUtilizationPercentage > 70 avg 5m", "up 1", "use 'out N'"),
        ("CpuUtilizationPercentage > 70 avg 5m", "out 0", "at least 1"),
    ):
        assert says in cli.fails(*rule, "--condition", condition, "--scale", *scale.split())
    assert "unknown metric 'CpuUtilizationPercentage' for an endpoint" in cli.fails(
        *rule,
        "--condition",
        "CpuUtilizationPercentage > 1 avg 5m",
        "--scale",
        "out",
        "1",
        "--resource",
        ENDPOINT_ID,
    )
    listed = cli.json("monitor", "autoscale", "rule", "list", "--autoscale-name", "shop")
    assert [r["index"] for r in listed] == [0, 1, 2]
    assert listed[1]["metricSource"] == "shop" and listed[1]["cooldown"] == "2m"

    profile = ("monitor", "autoscale", "profile", "create", "--autoscale-name", "shop")
    weekend = cli.json(
        *profile,
        "--name",
        "weekend",
        "--recurrence",
        "week",
        "sat",
        "sun",
        "--timezone",
        "Pacific Standard Time",
        "--count",
        "2",
        "--copy-rules",
        "default",
    )
    assert weekend["recurrence"] == {
        "days": ["saturday", "sunday"],
        "start": "00:00",
        "end": "23:59",
    }
    assert len(weekend["rules"]) == 3
    for args, says in (
        (
            (
                "--name",
                "sunday",
                "--recurrence",
                "week",
                "sun",
                "--start",
                "08:00",
                "--end",
                "12:00",
                "--timezone",
                "UTC",
                "--count",
                "1",
            ),
            "overlapping recurrences",
        ),
        (
            (
                "--name",
                "x",
                "--recurrence",
                "week",
                "caturday",
                "--timezone",
                "UTC",
                "--count",
                "1",
            ),
            "not a day of the week",
        ),
        (
            ("--name", "x", "--recurrence", "week", "mon", "--timezone", "Mars", "--count", "1"),
            "unknown time zone",
        ),
        (
            (
                "--name",
                "x",
                "--start",
                "2026-12-02T00:00",
                "--end",
                "2026-12-01T00:00",
                "--timezone",
                "UTC",
                "--count",
                "1",
            ),
            "start is not before end",
        ),
        (("--name", "x", "--timezone", "UTC", "--count", "1"), "needs --recurrence"),
    ):
        assert says in cli.fails(*profile, *args)
    cli.json(
        *profile,
        "--name",
        "launch",
        "--start",
        "2026-12-01T09:00",
        "--end",
        "2026-12-02T09:00",
        "--timezone",
        "W. Europe Standard Time",
        "--count",
        "4",
        "--max-count",
        "5",
    )
    names = [
        p["name"]
        for p in cli.json("monitor", "autoscale", "profile", "list", "--autoscale-name", "shop")
    ]
    assert names == ["default", "weekend", "launch"]
    assert "cannot be deleted" in cli.fails(
        "monitor", "autoscale", "profile", "delete", "--autoscale-name", "shop", "-n", "default"
    )
    cli.run("monitor", "autoscale", "profile", "delete", "--autoscale-name", "shop", "-n", "launch")

    assert "has no rule 7" in cli.fails(
        "monitor", "autoscale", "rule", "delete", "--autoscale-name", "shop", "--index", "7"
    )
    code, _, err = cli.run(
        "monitor", "autoscale", "rule", "delete", "--autoscale-name", "shop", "--index", "0", "2"
    )
    assert code == 0, err
    left = cli.json("monitor", "autoscale", "rule", "list", "--autoscale-name", "shop")
    assert [r["condition"] for r in left] == ["RequestLatency_P99 > 300 max 10m"]

    updated = cli.json(
        "monitor", "autoscale", "update", "-n", "shop", "--max-count", "3", "--enabled", "false"
    )
    assert updated["enabled"] is False
    assert updated["profiles"][0]["capacity"] == {"minimum": 1, "default": 2, "maximum": 3}
    assert "default count 2 is not within [1, 1]" in cli.fails(
        "monitor", "autoscale", "update", "-n", "shop", "--max-count", "1"
    )
    shown = cli.json("monitor", "autoscale", "show", "-n", "shop")
    assert shown["profiles"][0]["capacity"]["maximum"] == 3 and shown["version"] == 9

    # The YAML form.
    spec = tmp_path / "autoscale.yml"
    spec.write_text(YAML.replace("avg 10m", "avg 10 minutes"))
    assert "unexpected 'minutes' after the window" in cli.fails(
        "monitor", "autoscale", "create", "-f", str(spec)
    )
    spec.write_text(YAML + "colour: blue\n")
    assert "unknown field(s) colour" in cli.fails("monitor", "autoscale", "create", "-f", str(spec))
    spec.write_text(YAML.replace("minimum: 1,", "minimum: one,"))  # one line, no traceback
    err = cli.fails("monitor", "autoscale", "create", "-f", str(spec))
    assert "capacity.minimum 'one' is not a whole number" in err and "Traceback" not in err
    spec.write_text(YAML.replace("{days: [sat, sun]}", "[sat, sun]"))
    assert "recurrence must be a mapping" in cli.fails(
        "monitor", "autoscale", "create", "-f", str(spec)
    )
    spec.write_text(YAML)
    from_yaml = cli.json("monitor", "autoscale", "create", "-f", str(spec))
    assert [p["name"] for p in from_yaml["profiles"]] == ["default", "weekend"]
    assert from_yaml["profiles"][0]["rules"][1]["metricSource"] == "shop"
    assert from_yaml["profiles"][0]["rules"][0]["cooldown"] == "1m"
    assert [r["dividePerInstance"] for r in from_yaml["profiles"][0]["rules"]] == [
        False,
        False,
        True,
    ]
    rid = cli.run(
        "monitor",
        "autoscale",
        "show",
        "-n",
        "shop-yaml",
        "-o",
        "tsv",
        "--query",
        "targetResourceUri",
    )[1].strip()
    assert rid == resource_id("onlineEndpoints", "shop", "deployments", "green")

    code, _, err = cli.run("monitor", "autoscale", "delete", "-n", "shop")
    assert code == 0, err
    assert "does not exist" in cli.fails("monitor", "autoscale", "show", "-n", "shop")
    assert [s["name"] for s in cli.json("monitor", "autoscale", "list")] == ["shop-yaml"]
