"""`sluice alert create|list|delete`: alert rules on endpoint and deployment metrics."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any

import typer

from sluice.sdk.cli.metrics_cmds import metrics_client
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.metrics import load_alert_rule

app = typer.Typer(
    help="Alert rules: fire and resolve sluice.alert.* events on NATS.", no_args_is_help=True
)
RuleFileOption = typer.Option(..., "--file", "-f", help="the rule's YAML")
COLUMNS = ["name", "scope", "condition", "window_s", "for_s", "state", "last_value"]


def view(rule: Any) -> dict[str, Any]:
    scope = rule.endpoint_name + (f"/{rule.deployment_name}" if rule.deployment_name else "")
    return {
        "name": rule.name,
        "scope": scope,
        "metric": rule.metric,
        "aggregation": rule.aggregation,
        "operator": rule.operator,
        "threshold": rule.threshold,
        "condition": f"{rule.aggregation}({rule.metric}) {rule.operator} {rule.threshold:g}",
        "window_s": rule.window_s,
        "for_s": rule.for_s,
        "state": rule.state,
        "state_since": rule.state_since.ToDatetime(UTC).isoformat()
        if rule.HasField("state_since")
        else None,
        "last_value": round(rule.last_value, 3),
        "description": rule.description,
    }


@app.command()
def create(
    file: Path = RuleFileOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create an alert rule from YAML (metric, scope, aggregation, operator, threshold, ...)."""
    rule = load_alert_rule(file)
    with metrics_client() as client:
        created = client.create_alert_rule(rule)
    err_console.print(f"Created alert rule {created.name}.")
    render(view(created), output, columns=COLUMNS)


@app.command("list")
def list_(
    endpoint: str = typer.Option("", "--endpoint-name", "-e", help="only this endpoint's"),
    output: OutputFormat = OutputOption,
) -> None:
    """List alert rules and where each stands (ok, pending, firing)."""
    with metrics_client() as client:
        rules = client.list_alert_rules(endpoint)
    render([view(r) for r in rules], output, columns=COLUMNS, title="Alert rules")


@app.command()
def delete(name: str = typer.Option(..., "--name", "-n")) -> None:
    """Delete an alert rule (a firing alert then just stops; no resolved event)."""
    with metrics_client() as client:
        client.delete_alert_rule(name)
    err_console.print(f"Deleted alert rule {name}.")
