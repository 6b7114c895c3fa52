"""Autoscale settings from the client side: the gRPC client, resource ids, az's flags
(`--condition`, `--scale out 2`, `--recurrence week sat sun`) and the YAML form,
turned into `sluice.v1.AutoscaleSetting` messages. Everything parses here first, so a
bad condition is refused before any call; the service validates the whole setting
again (limits, metrics, overlapping schedules) before it stores anything."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from sluice.common.autoscale.condition import (
    ConditionError,
    parse_condition,
    parse_period,
    parse_time_grain,
)
from sluice.common.autoscale.model import DEFAULT_COOLDOWN_S
from sluice.sdk.client import SluiceError
from sluice.sdk.metrics import MetricsClient
from sluice.v1 import autoscale_pb2, autoscale_pb2_grpc

_RESOURCE = re.compile(
    r"/onlineEndpoints/(?P<endpoint>[^/]+)(?:/deployments/(?P<deployment>[^/]+))?/?$",
    re.IGNORECASE,
)


def invalid(message: str) -> SluiceError:
    return SluiceError("INVALID_ARGUMENT", message)


def parse_resource(text: str) -> tuple[str, str]:
    """(endpoint, deployment or "") of an id printed by `online-deployment show --query id`
    (or the endpoint's)."""
    m = _RESOURCE.search(text.strip())
    if m is None or not text.strip().startswith("/"):
        raise invalid(
            f"--resource {text!r} is not an online endpoint or deployment id (print one with "
            "`sluice online-deployment show -e E -n D -o tsv --query id`)"
        )
    return m.group("endpoint"), m.group("deployment") or ""


def make_rule(
    condition: str,
    scale: tuple[str, str] | list[str],
    *,
    cooldown_min: float | None = None,
    timegrain: str = "avg 1m",
    resource: str | None = None,
    divide_per_instance: bool = False,
) -> Any:
    """az's `rule create` flags -> an AutoscaleRule message (`divide_per_instance`: Azure's
    dividePerInstance, which az has no flag for: the YAML form's)."""
    try:
        parsed = parse_condition(condition)
        statistic, grain_s = parse_time_grain(timegrain)
    except ConditionError as exc:
        raise invalid(str(exc)) from None
    if len(scale) != 2 or scale[0] not in ("out", "in", "to"):
        raise invalid(f"--scale {' '.join(scale)!r}: use 'out N', 'in N', 'to N' or 'out N%'")
    amount = scale[1].strip()
    percent = amount.endswith("%")
    try:
        value = int(amount.rstrip("%"))
    except ValueError:
        raise invalid(f"--scale {' '.join(scale)!r}: {amount!r} is not a whole number") from None
    endpoint, deployment = parse_resource(resource) if resource else ("", "")
    return autoscale_pb2.AutoscaleRule(
        metric=parsed.metric,
        metric_endpoint=endpoint,
        metric_deployment=deployment,
        operator=parsed.operator,
        threshold=parsed.threshold,
        time_aggregation=parsed.aggregation,
        window_s=parsed.window_s,
        time_grain_statistic=statistic,
        time_grain_s=grain_s,
        scale=scale[0],
        value=value,
        percent=percent,
        cooldown_s=DEFAULT_COOLDOWN_S if cooldown_min is None else cooldown_min * 60,
        divide_per_instance=divide_per_instance,
    )


def make_profile(
    name: str,
    count: int,
    min_count: int | None,
    max_count: int | None,
    *,
    timezone: str = "UTC",
    recurrence: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Any:
    """az's `profile create`: `--recurrence week sat sun [--start hh:mm --end hh:mm]`, or
    `--start/--end` date-times for a fixed-date profile, or neither (the default)."""
    profile = autoscale_pb2.AutoscaleProfile(
        name=name,
        default_count=count,
        min_count=count if min_count is None else min_count,
        max_count=count if max_count is None else max_count,
        timezone=timezone,
    )
    if recurrence:
        if recurrence[0].lower() != "week" or len(recurrence) < 2:
            raise invalid(
                f"--recurrence {' '.join(recurrence)!r}: use 'week' and days, e.g. week sat sun"
            )
        profile.recurrence.days.extend(recurrence[1:])
        profile.recurrence.start = start or "00:00"
        profile.recurrence.end = end or "23:59"
    elif start or end:
        if not (start and end):
            raise invalid("a fixed-date profile needs both --start and --end")
        profile.fixed_date.start, profile.fixed_date.end = start, end
    return profile


SETTING_FIELDS = {"name", "resource", "enabled", "profiles"}
PROFILE_FIELDS = {"name", "capacity", "rules", "timezone", "recurrence", "fixed_date"}
RULE_FIELDS = {"condition", "scale", "cooldown", "timegrain", "resource", "divide_per_instance"}
CAPACITY_FIELDS = {"minimum", "default", "maximum"}
RECURRENCE_FIELDS = {"days", "start", "end"}
FIXED_DATE_FIELDS = {"start", "end"}


def _fields(raw: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be a mapping")
    unknown = set(raw) - allowed
    if unknown:
        raise invalid(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid(f"{where} must be a list")
    return raw


def _count(raw: Any, where: str) -> int:
    """A whole number of instances (YAML's 3 or "3"; not 1.5, true or "one")."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw):
        return int(raw)
    raise invalid(f"{where} {raw!r} is not a whole number")


def _enabled(raw: Any, where: str) -> bool:
    """true or false (YAML's booleans, or the words quoted): "false" is not true."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise invalid(f"{where} {raw!r} must be true or false")


def _text(raw: Any, where: str) -> str | None:
    """A time of day or a date-time as written. YAML reads an unquoted 10:30 as the number
    630 (base 60), so a number is refused with the fix."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int | float):  # bool is an int too
        raise invalid(f'{where} {raw!r} is not a time: quote it, e.g. "10:30"')
    return str(raw)


def _schedule(p: dict[str, Any], where: str) -> tuple[list[str] | None, str | None, str | None]:
    """(az's `--recurrence week DAYS`, start, end) of a profile's recurrence or fixed date."""
    if p.get("recurrence") is not None and p.get("fixed_date") is not None:
        raise invalid(f"{where}: a profile has a recurrence or a fixed_date, not both")
    if p.get("recurrence") is not None:
        if not isinstance(p["recurrence"], dict):
            raise invalid(
                f"{where}.recurrence must be a mapping, e.g. "
                '{days: [sat, sun], start: "08:00", end: "18:00"}'
            )
        recurrence = _fields(p["recurrence"], RECURRENCE_FIELDS, f"{where}.recurrence")
        days = recurrence.get("days")
        if isinstance(days, str):
            days = days.split()
        days = _list(days, f"{where}.recurrence.days")
        if not days or not all(isinstance(d, str) for d in days):
            raise invalid(f"{where}.recurrence.days must list days, e.g. [sat, sun]")
        start = _text(recurrence.get("start"), f"{where}.recurrence.start")
        end = _text(recurrence.get("end"), f"{where}.recurrence.end")
        return ["week", *days], start, end
    if p.get("fixed_date") is not None:
        fixed = _fields(p["fixed_date"], FIXED_DATE_FIELDS, f"{where}.fixed_date")
        start = _text(fixed.get("start"), f"{where}.fixed_date.start")
        end = _text(fixed.get("end"), f"{where}.fixed_date.end")
        if start is None or end is None:
            raise invalid(f"{where}.fixed_date needs both start and end")
        return None, start, end
    return None, None, None


def load_setting(path: Path) -> Any:
    """An autoscale setting from YAML (docs/autoscale.md, "YAML form"). Any bad input is a
    SluiceError naming the field (the CLI prints it as one line, and nothing is stored)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise invalid(f"cannot read {path}: {exc}") from None
    raw = _fields(raw, SETTING_FIELDS, str(path))
    if not raw.get("resource"):
        raise invalid(f"{path}: resource (the deployment's id) is required")
    endpoint, deployment = parse_resource(str(raw["resource"]))
    if not deployment:
        raise invalid(f"{path}: resource must be a deployment's id, not an endpoint's")
    setting = autoscale_pb2.AutoscaleSetting(
        name=str(raw.get("name") or deployment),
        endpoint_name=endpoint,
        deployment_name=deployment,
        enabled=_enabled(raw.get("enabled", True), f"{path}: enabled"),
    )
    for i, p in enumerate(_list(raw.get("profiles"), f"{path}: profiles")):
        where = f"{path}: profiles[{i}]"
        p = _fields(p, PROFILE_FIELDS, where)
        capacity = _fields(p.get("capacity", {}), CAPACITY_FIELDS, f"{where}.capacity")
        at = f"{where}.capacity."
        if "default" in capacity:
            count = _count(capacity["default"], at + "default")
        else:
            count = _count(capacity.get("minimum", 1), at + "minimum")
        recurrence, start, end = _schedule(p, where)
        profile = make_profile(
            str(p.get("name", "default")),
            count,
            _count(capacity.get("minimum", count), at + "minimum"),
            _count(capacity.get("maximum", count), at + "maximum"),
            timezone=str(p.get("timezone", "UTC")),
            recurrence=recurrence,
            start=start,
            end=end,
        )
        for j, r in enumerate(_list(p.get("rules"), f"{where}.rules")):
            r = _fields(r, RULE_FIELDS, f"{where}.rules[{j}]")
            if "condition" not in r or "scale" not in r:
                raise invalid(f"{where}.rules[{j}] needs condition and scale")
            cooldown = r.get("cooldown")
            profile.rules.append(
                make_rule(
                    str(r["condition"]),
                    str(r["scale"]).split(),
                    cooldown_min=None if cooldown is None else _minutes(cooldown),
                    timegrain=str(r.get("timegrain", "avg 1m")),
                    resource=None if r.get("resource") is None else str(r["resource"]),
                    divide_per_instance=_enabled(
                        r.get("divide_per_instance", False),
                        f"{where}.rules[{j}].divide_per_instance",
                    ),
                )
            )
        setting.profiles.append(profile)
    return setting


def _minutes(value: Any) -> float:
    if isinstance(value, bool):
        raise invalid(f"cooldown {value!r} is not a duration: minutes (5) or a period (5m)")
    if isinstance(value, int | float):
        return float(value)
    try:
        return parse_period(str(value), "cooldown") / 60
    except ConditionError as exc:
        raise invalid(str(exc)) from None


def as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class AutoscaleClient(MetricsClient):
    """The metrics service's `Autoscale` API (same address and token as `Metrics`)."""

    def __init__(self, address: str, token: str):
        super().__init__(address, token)
        self._autoscale = autoscale_pb2_grpc.AutoscaleStub(self._channel)

    def create(self, setting: Any) -> Any:
        return self._call(self._autoscale.CreateAutoscaleSetting, setting)

    def get(self, name: str) -> Any:
        request = autoscale_pb2.GetAutoscaleSettingRequest(name=name)
        return self._call(self._autoscale.GetAutoscaleSetting, request)

    def list(self, endpoint: str = "") -> list[Any]:
        request = autoscale_pb2.ListAutoscaleSettingsRequest(endpoint_name=endpoint)
        return list(self._call(self._autoscale.ListAutoscaleSettings, request).settings)

    def update(self, setting: Any) -> Any:
        return self._call(self._autoscale.UpdateAutoscaleSetting, setting)

    def decisions(self, endpoint: str, deployment: str) -> Any:
        """Every recent scale decision about a deployment (its setting's and its own
        scale_settings'), most recent first."""
        request = autoscale_pb2.ListScaleDecisionsRequest(
            endpoint_name=endpoint, deployment_name=deployment
        )
        return self._call(self._autoscale.ListScaleDecisions, request)

    def delete(self, name: str) -> None:
        request = autoscale_pb2.DeleteAutoscaleSettingRequest(name=name)
        self._call(self._autoscale.DeleteAutoscaleSetting, request)
