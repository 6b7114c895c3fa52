"""Autoscale settings <-> Azure Monitor's `Microsoft.Insights/autoscalesettings` resource.

The REST API's shape (proto/sluice/v1/autoscale.proto, `AutoscaleSettingResource`):
`{id, name, type, location, properties: {enabled, targetResourceUri, profiles: [{name,
capacity: {minimum, maximum, default}, rules: [{metricTrigger, scaleAction}],
recurrence | fixedDate}]}}` with Azure's spellings (GreaterThan, Increase/ChangeCount,
ISO 8601 durations, counts as strings). A recurring profile's end is Azure's paired
profile (`{"name": "<default>", "for": "<profile>"}`) that starts at that time, as
`az monitor autoscale profile create --recurrence` writes it; it is read back as the
end and not stored as a profile. Errors are AutoscaleError naming the field.
"""

from __future__ import annotations

import json
from typing import Any

from sluice.common.autoscale.model import (
    AutoscaleError,
    AutoscaleFixedDate,
    AutoscaleProfile,
    AutoscaleRecurrence,
    AutoscaleRule,
    AutoscaleSetting,
)
from sluice.common.azure_ids import resource_id
from sluice.common.mongo import Document
from sluice.metrics.azure_monitor import BadQuery, parse_duration
from sluice.v1 import autoscale_pb2 as pb

TYPE = "Microsoft.Insights/autoscaleSettings"
OPERATORS = {
    ">": "GreaterThan",
    ">=": "GreaterThanOrEqual",
    "<": "LessThan",
    "<=": "LessThanOrEqual",
    "==": "Equals",
    "!=": "NotEquals",
}
STATISTICS = {"avg": "Average", "min": "Min", "max": "Max", "sum": "Sum"}
AGGREGATIONS = {
    "avg": "Average",
    "min": "Minimum",
    "max": "Maximum",
    "total": "Total",
    "count": "Count",
}


def setting_id(name: str) -> str:
    return resource_id("providers", "Microsoft.Insights", "autoscalesettings", name)


def target_id(endpoint: str, deployment: str = "") -> str:
    tail = ["deployments", deployment] if deployment else []
    return resource_id("onlineEndpoints", endpoint, *tail)


def _seconds(seconds: float) -> str:
    whole = int(seconds)
    if whole % 3600 == 0 and whole:
        return f"PT{whole // 3600}H"
    if whole % 60 == 0 and whole:
        return f"PT{whole // 60}M"
    return f"PT{seconds:g}S"


def _count(value: int) -> str:
    return str(value)


# ---- out ----------------------------------------------------------------------------------


def _rule_out(rule: AutoscaleRule, setting: AutoscaleSetting) -> pb.ScaleRule:
    source = target_id(
        rule.metric_endpoint or setting.endpoint_name,
        rule.metric_deployment if rule.metric_endpoint else setting.deployment_name,
    )
    if rule.scale == "to":
        direction, kind = "None", "ExactCount"
    else:
        direction = "Increase" if rule.scale == "out" else "Decrease"
        kind = "PercentChangeCount" if rule.percent else "ChangeCount"
    return pb.ScaleRule(
        metric_trigger=pb.MetricTrigger(
            metric_name=rule.metric,
            metric_resource_uri=source,
            time_grain=_seconds(rule.time_grain_s),
            statistic=STATISTICS.get(rule.time_grain_statistic, rule.time_grain_statistic),
            time_window=_seconds(rule.window_s),
            time_aggregation=AGGREGATIONS.get(rule.time_aggregation, rule.time_aggregation),
            operator=OPERATORS.get(rule.operator, rule.operator),
            threshold=rule.threshold,
            divide_per_instance=rule.divide_per_instance,
        ),
        scale_action=pb.ScaleAction(
            direction=direction,
            type=kind,
            value=_count(rule.value),
            cooldown=_seconds(rule.cooldown_s),
        ),
    )


def _capacity(profile: AutoscaleProfile) -> pb.ScaleCapacity:
    return pb.ScaleCapacity(
        minimum=_count(profile.min_count),
        maximum=_count(profile.max_count),
        default_count=_count(profile.default_count),
    )


def _weekly(profile: AutoscaleProfile, days: list[str], at: str) -> pb.Recurrence:
    hours, minutes = (int(part) for part in at.split(":"))
    return pb.Recurrence(
        frequency="Week",
        schedule=pb.RecurrentSchedule(
            time_zone=profile.timezone,
            days=[d.capitalize() for d in days],
            hours=[hours],
            minutes=[minutes],
        ),
    )


def profiles_out(setting: AutoscaleSetting) -> list[pb.AutoscaleProfileResource]:
    default = next((p for p in setting.profiles if not p.scheduled), None)
    out = []
    for profile in setting.profiles:
        rules = [_rule_out(r, setting) for r in profile.rules]
        found = pb.AutoscaleProfileResource(
            name=profile.name, capacity=_capacity(profile), rules=rules
        )
        if profile.fixed_date is not None:
            found.fixed_date.CopyFrom(
                pb.AutoscaleFixedWindow(
                    time_zone=profile.timezone,
                    start=profile.fixed_date.start,
                    end=profile.fixed_date.end,
                )
            )
        out.append(found)
        if profile.recurrence is None:
            continue
        found.recurrence.CopyFrom(
            _weekly(profile, profile.recurrence.days, profile.recurrence.start)
        )
        back = default or profile
        out.append(
            pb.AutoscaleProfileResource(
                name=json.dumps({"name": back.name, "for": profile.name}),
                capacity=_capacity(back),
                rules=[_rule_out(r, setting) for r in (default.rules if default else [])],
                recurrence=_weekly(profile, profile.recurrence.days, profile.recurrence.end),
            )
        )
    return out


def resource(doc: Document) -> pb.AutoscaleSettingResource:
    setting = AutoscaleSetting.model_validate(doc["spec"])
    state = doc.get("state") or {}
    props = pb.AutoscaleSettingProperties(
        name=setting.name,
        enabled=setting.enabled,
        target_resource_uri=target_id(setting.endpoint_name, setting.deployment_name),
        profiles=profiles_out(setting),
        current_capacity=int(state.get("capacity") or 0),
        active_profile=state.get("active_profile") or "",
    )
    return pb.AutoscaleSettingResource(
        id=setting_id(setting.name),
        name=setting.name,
        type=TYPE,
        location="local",
        properties=props,
    )


# ---- in -----------------------------------------------------------------------------------


def _pick(table: dict[str, str], text: str, field: str, default: str) -> str:
    if not text:
        return default
    for ours, azure in table.items():
        if azure.lower() == text.lower():
            return ours
    raise AutoscaleError(f"{field} {text!r} is not one of {', '.join(table.values())}")


def _whole(text: str, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AutoscaleError(f"{field} {text!r} is not a whole number") from None


def _duration_s(text: str, field: str, default: float) -> float:
    if not text:
        return default
    try:
        return parse_duration(text, field).total_seconds()
    except BadQuery as exc:
        raise AutoscaleError(str(exc)) from None


def _scope_of(uri: str, field: str) -> tuple[str, str]:
    """(endpoint, deployment) of an online endpoint's or deployment's id."""
    parts = uri.strip("/").split("/")
    try:
        at = parts.index("onlineEndpoints")
    except ValueError:
        raise AutoscaleError(
            f"{field} {uri!r} is not an online endpoint's or deployment's id "
            "(.../onlineEndpoints/<e>[/deployments/<d>])"
        ) from None
    rest = parts[at + 1 :]
    if len(rest) == 1:
        return rest[0], ""
    if len(rest) == 3 and rest[1] == "deployments":
        return rest[0], rest[2]
    raise AutoscaleError(f"{field} {uri!r} is not an online endpoint's or deployment's id")


def _rule_in(rule: pb.ScaleRule, where: str, target: tuple[str, str]) -> AutoscaleRule:
    trigger, action = rule.metric_trigger, rule.scale_action
    kind = action.type.lower()
    direction = action.direction.lower()
    if kind == "exactcount":
        scale = "to"
    elif kind in ("changecount", "percentchangecount") and direction in ("increase", "decrease"):
        scale = "out" if direction == "increase" else "in"
    else:
        raise AutoscaleError(
            f"{where}.scaleAction: type {action.type!r} / direction {action.direction!r} is not "
            "ChangeCount or PercentChangeCount with Increase or Decrease, or ExactCount"
        )
    source = target
    if trigger.metric_resource_uri:
        source = _scope_of(trigger.metric_resource_uri, f"{where}.metricTrigger.metricResourceUri")
    return AutoscaleRule(
        metric=trigger.metric_name,
        metric_endpoint="" if source == target else source[0],
        metric_deployment="" if source == target else source[1],
        operator=_pick(OPERATORS, trigger.operator, f"{where}.metricTrigger.operator", ">"),
        threshold=trigger.threshold,
        time_aggregation=_pick(
            AGGREGATIONS, trigger.time_aggregation, f"{where}.metricTrigger.timeAggregation", "avg"
        ),
        window_s=int(_duration_s(trigger.time_window, f"{where}.metricTrigger.timeWindow", 300)),
        time_grain_statistic=_pick(
            STATISTICS, trigger.statistic, f"{where}.metricTrigger.statistic", "avg"
        ),
        time_grain_s=int(_duration_s(trigger.time_grain, f"{where}.metricTrigger.timeGrain", 60)),
        scale=scale,
        value=_whole(action.value or "1", f"{where}.scaleAction.value"),
        percent=kind == "percentchangecount",
        cooldown_s=_duration_s(action.cooldown, f"{where}.scaleAction.cooldown", 300.0),
        divide_per_instance=trigger.divide_per_instance,
    )


def _start(recurrence: pb.Recurrence, where: str) -> tuple[list[str], str, str]:
    """(days, HH:MM, time zone) of a weekly recurrence."""
    if recurrence.frequency.lower() != "week":
        raise AutoscaleError(f"{where}.recurrence.frequency {recurrence.frequency!r}: only Week")
    schedule = recurrence.schedule
    if len(schedule.hours) != 1 or len(schedule.minutes) != 1:
        raise AutoscaleError(
            f"{where}.recurrence.schedule: give one start time (hours: [h], minutes: [m])"
        )
    at = f"{schedule.hours[0]:02d}:{schedule.minutes[0]:02d}"
    return [d.lower() for d in schedule.days], at, schedule.time_zone or "UTC"


def _pair_of(name: str) -> str | None:
    """The profile a paired profile ends (`{"name": ..., "for": "<profile>"}`), else None."""
    if not name.startswith("{"):
        return None
    try:
        found = json.loads(name)
    except ValueError:
        return None
    return str(found["for"]) if isinstance(found, dict) and "for" in found else None


def setting_in(name: str, res: pb.AutoscaleSettingResource) -> AutoscaleSetting:
    props = res.properties
    if res.name and res.name != name:
        raise AutoscaleError(f"the body names {res.name!r} but the path {name!r}; they must match")
    if res.tags:
        raise AutoscaleError("tags: Sluice keeps no tags on autoscale settings")
    if not props.target_resource_uri:
        raise AutoscaleError("properties.targetResourceUri is required (the deployment's id)")
    target = _scope_of(props.target_resource_uri, "properties.targetResourceUri")
    if not target[1]:
        raise AutoscaleError("properties.targetResourceUri must be a deployment's id")
    ends: dict[str, str] = {}
    for i, profile in enumerate(props.profiles):
        owner = _pair_of(profile.name)
        if owner is not None:
            ends[owner] = _start(profile.recurrence, f"properties.profiles[{i}]")[1]
    profiles = []
    for i, profile in enumerate(props.profiles):
        where = f"properties.profiles[{i}]"
        if _pair_of(profile.name) is not None:
            continue
        data: dict[str, Any] = {
            "name": profile.name,
            "min_count": _whole(profile.capacity.minimum or "1", f"{where}.capacity.minimum"),
            "max_count": _whole(profile.capacity.maximum or "1", f"{where}.capacity.maximum"),
            "default_count": _whole(
                profile.capacity.default_count or "1", f"{where}.capacity.default"
            ),
            "rules": [
                _rule_in(rule, f"{where}.rules[{j}]", target)
                for j, rule in enumerate(profile.rules)
            ],
        }
        if profile.HasField("recurrence"):
            days, start, timezone = _start(profile.recurrence, where)
            end = ends.get(profile.name, "23:59")
            data["recurrence"] = AutoscaleRecurrence(days=days, start=start, end=end)
            data["timezone"] = timezone
        if profile.HasField("fixed_date"):
            window = profile.fixed_date
            data["fixed_date"] = AutoscaleFixedDate(start=window.start, end=window.end)
            data["timezone"] = window.time_zone or "UTC"
        profiles.append(AutoscaleProfile(**data))
    return AutoscaleSetting(
        name=name,
        endpoint_name=target[0],
        deployment_name=target[1],
        enabled=props.enabled if props.HasField("enabled") else True,
        profiles=profiles,
    )
