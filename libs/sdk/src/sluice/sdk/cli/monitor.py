"""`sluice monitor autoscale ...`: Azure Monitor autoscale settings, with the flags of
`az monitor autoscale` (create/show/list/update/delete, `rule create|list|delete`,
`profile create|list|delete`) and a YAML form (`create -f`). Rules and profiles are
edited as az edits them: read the setting, change it, write it back with its version
(a concurrent change is refused, not overwritten)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any, cast

import typer

from sluice.common.autoscale.condition import format_condition
from sluice.common.azure_ids import RESOURCE_GROUP, SUBSCRIPTION, resource_id
from sluice.sdk.autoscale import (
    AutoscaleClient,
    invalid,
    load_setting,
    make_profile,
    make_rule,
    parse_resource,
)
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render

app = typer.Typer(help="Azure Monitor: autoscale settings.", no_args_is_help=True)
autoscale = typer.Typer(
    help="Autoscale settings of online deployments (metric rules, schedules).",
    no_args_is_help=True,
)
rule_app = typer.Typer(help="Scale rules of an autoscale profile.", no_args_is_help=True)
profile_app = typer.Typer(
    help="Profiles (schedules) of an autoscale setting.", no_args_is_help=True
)
app.add_typer(autoscale, name="autoscale")
autoscale.add_typer(rule_app, name="rule")
autoscale.add_typer(profile_app, name="profile")
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": False}
FileOption = typer.Option(None, "--file", "-f", help="the setting as YAML")
SettingName = typer.Option(..., "--autoscale-name", help="the autoscale setting")
ProfileName = typer.Option("default", "--profile-name", help="the profile (default: default)")
SETTING_COLUMNS = ["name", "target", "enabled", "capacity", "activeProfile", "profiles"]
DECISION_COLUMNS = ["time", "profile", "reason", "rule", "value", "oldCount", "newCount"]
RESOURCE_DECISION_COLUMNS = ["time", "setting", "rule", "metric", "value", "oldCount", "newCount"]


@contextmanager
def client() -> Iterator[AutoscaleClient]:
    c = cast(AutoscaleClient, AutoscaleClient.connect())
    try:
        yield c
    finally:
        c.close()


def rule_view(index: int, rule: Any) -> dict[str, Any]:
    amount = f"{rule.value}%" if rule.percent else str(rule.value)
    source = rule.metric_endpoint + (f"/{rule.metric_deployment}" if rule.metric_deployment else "")
    return {
        "index": index,
        "condition": format_condition(
            rule.metric, rule.operator, rule.threshold, rule.time_aggregation, rule.window_s
        ),
        "scale": f"{rule.scale} {amount}",
        "cooldown": f"{rule.cooldown_s / 60:g}m",
        "timegrain": f"{rule.time_grain_statistic} {rule.time_grain_s}s",
        "metricSource": source or "(target)",
        "dividePerInstance": rule.divide_per_instance,
    }


def profile_view(profile: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": profile.name,
        "capacity": {
            "minimum": profile.min_count,
            "default": profile.default_count,
            "maximum": profile.max_count,
        },
        "rules": [rule_view(i, r) for i, r in enumerate(profile.rules)],
        "timezone": profile.timezone,
    }
    if profile.HasField("recurrence"):
        rec = profile.recurrence
        view["recurrence"] = {"days": list(rec.days), "start": rec.start, "end": rec.end}
    if profile.HasField("fixed_date"):
        view["fixedDate"] = {"start": profile.fixed_date.start, "end": profile.fixed_date.end}
    return view


def decision_view(d: Any) -> dict[str, Any]:
    return {
        "time": d.time.ToDatetime(UTC).isoformat(),
        "setting": d.setting,
        "profile": d.profile,
        "reason": d.reason,
        "rule": d.rule,
        "metric": d.metric,
        "value": round(d.value, 3) if d.has_value else None,
        "oldCount": d.old_count,
        "newCount": d.new_count,
    }


def setting_view(s: Any) -> dict[str, Any]:
    target = resource_id("onlineEndpoints", s.endpoint_name, "deployments", s.deployment_name)
    return {
        "name": s.name,
        "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
        f"microsoft.insights/autoscalesettings/{s.name}",
        "targetResourceUri": target,
        "target": f"{s.endpoint_name}/{s.deployment_name}",
        "enabled": s.enabled,
        "capacity": s.capacity,
        "activeProfile": s.active_profile,
        "profiles": [profile_view(p) for p in s.profiles],
        "decisions": [decision_view(d) for d in s.decisions],
        "version": s.version,
    }


def _table_row(s: Any) -> dict[str, Any]:
    view = setting_view(s)
    view["profiles"] = ", ".join(p.name for p in s.profiles)
    return view


@autoscale.command()
def create(
    resource: str = typer.Option("", "--resource", help="the deployment's id (show --query id)"),
    name: str = typer.Option("", "--name", "-n", help="default: the deployment's name"),
    count: int | None = typer.Option(None, "--count", help="default instance count"),
    min_count: int | None = typer.Option(None, "--min-count"),
    max_count: int | None = typer.Option(None, "--max-count"),
    disabled: bool = typer.Option(False, "--disabled", help="create it switched off"),
    file: Path | None = FileOption,
    output: OutputFormat = OutputOption,
) -> None:
    """Create an autoscale setting with one `default` profile (or from YAML with -f)."""
    if file is not None:
        setting = load_setting(file)
    else:
        if not resource or count is None:
            raise invalid("--resource and --count are required (or --file)")
        endpoint, deployment = parse_resource(resource)
        if not deployment:
            raise invalid("--resource must be an online deployment's id, not an endpoint's")
        setting = make_setting(name or deployment, endpoint, deployment, not disabled)
        setting.profiles.append(make_profile("default", count, min_count, max_count))
    with client() as c:
        created = c.create(setting)
    err_console.print(f"Created autoscale setting {created.name}.")
    render(setting_view(created), output, columns=SETTING_COLUMNS)


def make_setting(name: str, endpoint: str, deployment: str, enabled: bool) -> Any:
    from sluice.v1 import autoscale_pb2

    return autoscale_pb2.AutoscaleSetting(
        name=name, endpoint_name=endpoint, deployment_name=deployment, enabled=enabled
    )


@autoscale.command()
def show(
    name: str = typer.Option("", "--name", "-n"),
    resource: str = typer.Option(
        "",
        "--resource",
        help="a deployment's id instead of a name: every recent decision about it, its "
        "setting's and its own scale_settings' (target_utilization, min_instances: 0)",
    ),
    output: OutputFormat = OutputOption,
) -> None:
    """Show a setting; as a table: its recent scale decisions, most recent first."""
    if bool(name) == bool(resource):
        raise invalid("give either --name (a setting) or --resource (a deployment's id)")
    if resource:
        show_resource(resource, output)
        return
    with client() as c:
        setting = c.get(name)
    if output is OutputFormat.table:
        err_console.print(
            f"{setting.name}: {setting.endpoint_name}/{setting.deployment_name}, "
            f"{'enabled' if setting.enabled else 'disabled'}, capacity {setting.capacity}, "
            f"profile {setting.active_profile or '-'}"
        )
        render(
            [decision_view(d) for d in setting.decisions],
            output,
            columns=DECISION_COLUMNS,
            title="Recent decisions",
        )
        return
    render(setting_view(setting), output)


def show_resource(resource: str, output: OutputFormat) -> None:
    endpoint, deployment = parse_resource(resource)
    if not deployment:
        raise invalid("--resource must be an online deployment's id, not an endpoint's")
    with client() as c:
        found = c.decisions(endpoint, deployment)
    decisions = [decision_view(d) for d in found.decisions]
    if output is not OutputFormat.table:
        render(
            {
                "target": f"{endpoint}/{deployment}",
                "autoscaleSetting": found.setting or None,
                "scaleSettings": {"type": found.scale_type, "minInstances": found.min_instances},
                "decisions": decisions,
            },
            output,
        )
        return
    err_console.print(
        f"{endpoint}/{deployment}: autoscale setting {found.setting or '(none)'}, "
        f"scale_settings {found.scale_type} (min_instances {found.min_instances})"
    )
    render(decisions, output, columns=RESOURCE_DECISION_COLUMNS, title="Recent decisions")


@autoscale.command("list")
def list_(
    endpoint: str = typer.Option("", "--endpoint-name", "-e", help="only this endpoint's"),
    output: OutputFormat = OutputOption,
) -> None:
    """List autoscale settings."""
    with client() as c:
        settings = c.list(endpoint)
    rows = [_table_row(s) if output is OutputFormat.table else setting_view(s) for s in settings]
    render(rows, output, columns=SETTING_COLUMNS, title="Autoscale settings")


def _profile(setting: Any, name: str) -> Any:
    for profile in setting.profiles:
        if profile.name.lower() == name.lower():
            return profile
    raise invalid(
        f"autoscale setting {setting.name!r} has no profile {name!r} "
        f"(profiles: {', '.join(p.name for p in setting.profiles)})"
    )


@autoscale.command()
def update(
    name: str = typer.Option(..., "--name", "-n", "--autoscale-name"),
    count: int | None = typer.Option(None, "--count"),
    min_count: int | None = typer.Option(None, "--min-count"),
    max_count: int | None = typer.Option(None, "--max-count"),
    enabled: str | None = typer.Option(None, "--enabled", help="true or false"),
    output: OutputFormat = OutputOption,
) -> None:
    """Change the default profile's counts or switch the setting on or off."""
    with client() as c:
        setting = c.get(name)
        default = next(
            p
            for p in setting.profiles
            if not p.HasField("recurrence") and not p.HasField("fixed_date")
        )
        if count is not None:
            default.default_count = count
        if min_count is not None:
            default.min_count = min_count
        if max_count is not None:
            default.max_count = max_count
        if enabled is not None:
            if enabled.lower() not in ("true", "false"):
                raise invalid(f"--enabled {enabled!r}: use true or false")
            setting.enabled = enabled.lower() == "true"
        updated = c.update(setting)
    render(setting_view(updated), output, columns=SETTING_COLUMNS)


@autoscale.command()
def delete(name: str = typer.Option(..., "--name", "-n", "--autoscale-name")) -> None:
    """Delete a setting; the deployment keeps the count it has until its own spec changes."""
    with client() as c:
        c.delete(name)
    err_console.print(f"Deleted autoscale setting {name}.")


@rule_app.command("create")
def rule_create(
    setting_name: str = SettingName,
    condition: str = typer.Option(
        ..., "--condition", help='e.g. "CpuUtilizationPercentage > 70 avg 5m"'
    ),
    scale: tuple[str, str] = typer.Option(..., "--scale", help="out N | in N | to N | out N%"),
    cooldown: float = typer.Option(5, "--cooldown", help="minutes after a scale action"),
    timegrain: str = typer.Option("avg 1m", "--timegrain"),
    resource: str | None = typer.Option(None, "--resource", help="metric source (default: target)"),
    profile_name: str = ProfileName,
    output: OutputFormat = OutputOption,
) -> None:
    """Add a scale rule to a profile."""
    rule = make_rule(
        condition, scale, cooldown_min=cooldown, timegrain=timegrain, resource=resource
    )
    with client() as c:
        setting = c.get(setting_name)
        profile = _profile(setting, profile_name)
        profile.rules.append(rule)
        updated = c.update(setting)
    profile = _profile(updated, profile_name)
    render(rule_view(len(profile.rules) - 1, profile.rules[-1]), output)


@rule_app.command("list")
def rule_list(
    setting_name: str = SettingName,
    profile_name: str = ProfileName,
    output: OutputFormat = OutputOption,
) -> None:
    """List a profile's rules with the index `rule delete` takes."""
    with client() as c:
        profile = _profile(c.get(setting_name), profile_name)
    render([rule_view(i, r) for i, r in enumerate(profile.rules)], output, title="Rules")


@rule_app.command("delete", context_settings=EXTRA)
def rule_delete(
    ctx: typer.Context,
    setting_name: str = SettingName,
    index: str = typer.Option(..., "--index", help="indexes to delete (az: --index 0 1), or *"),
    profile_name: str = ProfileName,
) -> None:
    """Delete rules by index (`*`: all of the profile's)."""
    words = [index, *ctx.args]
    with client() as c:
        setting = c.get(setting_name)
        profile = _profile(setting, profile_name)
        if "*" in words:
            keep: list[Any] = []
        else:
            try:
                gone = {int(w) for w in words}
            except ValueError:
                raise invalid(f"--index {' '.join(words)!r}: use rule indexes or *") from None
            missing = sorted(i for i in gone if not 0 <= i < len(profile.rules))
            if missing:
                raise invalid(
                    f"profile {profile.name!r} has no rule {missing[0]} "
                    f"({len(profile.rules)} rules: `rule list`)"
                )
            keep = [r for i, r in enumerate(profile.rules) if i not in gone]
        del profile.rules[:]
        profile.rules.extend(keep)
        c.update(setting)
    err_console.print(f"Deleted rule(s) {' '.join(words)} of profile {profile.name}.")


@profile_app.command("create", context_settings=EXTRA)
def profile_create(
    ctx: typer.Context,
    setting_name: str = SettingName,
    name: str = typer.Option(..., "--name", "-n"),
    count: int = typer.Option(..., "--count"),
    min_count: int | None = typer.Option(None, "--min-count"),
    max_count: int | None = typer.Option(None, "--max-count"),
    timezone: str = typer.Option(..., "--timezone", help="e.g. 'Pacific Standard Time'"),
    recurrence: str | None = typer.Option(None, "--recurrence", help="week sat sun"),
    start: str | None = typer.Option(None, "--start", help="hh:mm, or a date-time"),
    end: str | None = typer.Option(None, "--end", help="hh:mm, or a date-time"),
    copy_rules: str | None = typer.Option(None, "--copy-rules", help="copy this profile's rules"),
    output: OutputFormat = OutputOption,
) -> None:
    """Add a recurring (`--recurrence week sat sun`) or fixed-date (`--start/--end`) profile."""
    days = [recurrence, *ctx.args] if recurrence else None
    profile = make_profile(
        name, count, min_count, max_count, timezone=timezone, recurrence=days, start=start, end=end
    )
    if not (days or start or end):
        raise invalid("a profile needs --recurrence or --start/--end (the default one exists)")
    with client() as c:
        setting = c.get(setting_name)
        if copy_rules:
            profile.rules.extend(_profile(setting, copy_rules).rules)
        setting.profiles.append(profile)
        updated = c.update(setting)
    render(profile_view(_profile(updated, name)), output)


@profile_app.command("list")
def profile_list(setting_name: str = SettingName, output: OutputFormat = OutputOption) -> None:
    """List a setting's profiles."""
    with client() as c:
        setting = c.get(setting_name)
    views = [profile_view(p) for p in setting.profiles]
    if output is OutputFormat.table:
        for v in views:
            v["rules"] = len(v["rules"])
    render(views, output, title="Profiles")


@profile_app.command("delete")
def profile_delete(
    setting_name: str = SettingName, name: str = typer.Option(..., "--name", "-n")
) -> None:
    """Delete a scheduled profile (the default profile stays)."""
    with client() as c:
        setting = c.get(setting_name)
        profile = _profile(setting, name)
        if not (profile.HasField("recurrence") or profile.HasField("fixed_date")):
            raise invalid("the default profile cannot be deleted; delete the setting instead")
        setting.profiles.remove(profile)
        c.update(setting)
    err_console.print(f"Deleted profile {name}.")
