"""An autoscale setting as stored and exchanged: one target deployment, profiles with
min/default/max instance counts, metric rules, schedules. Field names follow
`proto/sluice/v1/metrics.proto` (`AutoscaleSetting`), so a message converts with
`json_format.MessageToDict(..., preserving_proto_field_name=True)`.

`validate` is every check a setting must pass before it is stored; its errors name
the profile, the rule (by index, as `rule list` shows them) and the problem.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from sluice.common.autoscale.condition import AGGREGATIONS, GRAIN_STATISTICS, OPERATORS

MAX_PROFILES = 20  # Azure's limits
MAX_RULES = 10
DEFAULT_COOLDOWN_S = 300.0  # az's default: 5 minutes
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Metrics a rule can watch, by the scope of its metric source (Azure's tables for online
# endpoints and deployments, restricted to what the metrics service measures).
DEPLOYMENT_METRICS = (
    "CpuUtilizationPercentage",
    "CpuMemoryUtilizationPercentage",
    "DeploymentCapacity",
    "RequestsPerMinute",
    "RequestLatency_P50",
    "RequestLatency_P90",
    "RequestLatency_P95",
    "RequestLatency_P99",
    "ConnectionsActive",
)
ENDPOINT_METRICS = (
    "RequestsPerMinute",
    "RequestLatency",
    "RequestLatency_P50",
    "RequestLatency_P90",
    "RequestLatency_P95",
    "RequestLatency_P99",
    "NetworkBytes",
    "ConnectionsActive",
)
# Per-instance averages: after a scale-in the same load spreads over fewer instances, so
# the engine projects them (value x current / new) before it scales in (no flapping).
PER_INSTANCE_METRICS = ("CpuUtilizationPercentage", "CpuMemoryUtilizationPercentage")
# Metrics a rule may divide per instance (Azure's dividePerInstance): the load the target's
# instances share. CPU and memory are per instance already, a latency is not shared, and
# DeploymentCapacity per instance is 1.
DIVISIBLE_METRICS = ("RequestsPerMinute", "ConnectionsActive", "NetworkBytes")

# Azure writes time zones with Windows' names; the common ones map to IANA names here
# (an IANA name such as Europe/Berlin is accepted as well).
WINDOWS_ZONES = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "Romance Standard Time": "Europe/Paris",
    "Central European Standard Time": "Europe/Warsaw",
    "E. Europe Standard Time": "Europe/Chisinau",
    "FLE Standard Time": "Europe/Kiev",
    "Russian Standard Time": "Europe/Moscow",
    "India Standard Time": "Asia/Kolkata",
    "China Standard Time": "Asia/Shanghai",
    "Singapore Standard Time": "Asia/Singapore",
    "Tokyo Standard Time": "Asia/Tokyo",
    "Korea Standard Time": "Asia/Seoul",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "New Zealand Standard Time": "Pacific/Auckland",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Alaskan Standard Time": "America/Anchorage",
    "Pacific Standard Time": "America/Los_Angeles",
    "Mountain Standard Time": "America/Denver",
    "US Mountain Standard Time": "America/Phoenix",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "Atlantic Standard Time": "America/Halifax",
    "E. South America Standard Time": "America/Sao_Paulo",
}


class AutoscaleError(ValueError):
    """A setting that cannot be stored; the message names the part and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AutoscaleRule(_Model):
    """`scale` `value` (`percent`: of the current count) when `time_aggregation` of the
    metric (each `time_grain_s` reduced by `time_grain_statistic`; `divide_per_instance`:
    each grain's value divided by the target's instance count in it) over `window_s`
    compares true with `threshold`; then no action of this rule for `cooldown_s`."""

    metric: str
    metric_endpoint: str = ""  # the metric source; empty: the setting's target
    metric_deployment: str = ""  # empty with metric_endpoint set: the endpoint's scope
    operator: str = ">"
    threshold: float = 0.0
    time_aggregation: str = "avg"
    window_s: int = 300
    time_grain_statistic: str = "avg"
    time_grain_s: int = 60
    scale: Literal["out", "in", "to"] = "out"
    value: int = 1
    percent: bool = False
    cooldown_s: float = DEFAULT_COOLDOWN_S
    divide_per_instance: bool = False  # Azure's dividePerInstance

    @property
    def per_instance(self) -> bool:
        """Does its value spread over the instances (what a scale-in concentrates)?"""
        return self.divide_per_instance or self.metric in PER_INSTANCE_METRICS


class AutoscaleRecurrence(_Model):
    """Weekly: on `days`, from `start` to `end` (HH:MM, the profile's time zone)."""

    days: list[str] = Field(default_factory=list)
    start: str = "00:00"
    end: str = "23:59"


class AutoscaleFixedDate(_Model):
    """From `start` to `end` (ISO 8601; without an offset: the profile's time zone)."""

    start: str = ""
    end: str = ""


class AutoscaleProfile(_Model):
    name: str
    min_count: int = 1
    default_count: int = 1
    max_count: int = 1
    rules: list[AutoscaleRule] = Field(default_factory=list)
    timezone: str = "UTC"
    recurrence: AutoscaleRecurrence | None = None
    fixed_date: AutoscaleFixedDate | None = None

    @property
    def scheduled(self) -> bool:
        return self.recurrence is not None or self.fixed_date is not None


class AutoscaleSetting(_Model):
    name: str
    endpoint_name: str
    deployment_name: str
    enabled: bool = True
    profiles: list[AutoscaleProfile] = Field(default_factory=list)


def zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(WINDOWS_ZONES.get(name, name))
    except (ZoneInfoNotFoundError, ValueError):
        raise AutoscaleError(
            f"unknown time zone {name!r}: use an IANA name (Europe/Berlin) or one of "
            f"{', '.join(sorted(WINDOWS_ZONES))}"
        ) from None


def clock_time(text: str, what: str) -> time:
    try:
        hours, minutes = (int(p) for p in text.split(":"))
        return time(hours, minutes)
    except ValueError:
        raise AutoscaleError(f"{what} {text!r} is not a time of day HH:MM") from None


def day_name(text: str) -> str:
    """`sat`, `Saturday` -> `saturday`."""
    found = [d for d in DAYS if len(text) >= 2 and d.startswith(text.strip().lower())]
    if len(found) != 1:
        raise AutoscaleError(f"{text!r} is not a day of the week (mon ... sun)")
    return found[0]


def fixed_bounds(profile: AutoscaleProfile) -> tuple[datetime, datetime]:
    """A fixed-date profile's [start, end) as aware datetimes."""
    assert profile.fixed_date is not None
    tz = zone(profile.timezone)
    bounds = []
    for what, text in (("start", profile.fixed_date.start), ("end", profile.fixed_date.end)):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise AutoscaleError(
                f"profile {profile.name!r}: {what} {text!r} is not an ISO 8601 date and time"
            ) from None
        bounds.append(moment if moment.tzinfo else moment.replace(tzinfo=tz))
    if bounds[0] >= bounds[1]:
        raise AutoscaleError(f"profile {profile.name!r}: start is not before end")
    return bounds[0], bounds[1]


def _validate_rule(profile: str, index: int, rule: AutoscaleRule, setting_scope: bool) -> None:
    where = f"profile {profile!r} rule {index}"
    deployment_scope = setting_scope or bool(rule.metric_deployment)
    allowed = DEPLOYMENT_METRICS if deployment_scope else ENDPOINT_METRICS
    if rule.metric not in allowed:
        scope = "a deployment" if deployment_scope else "an endpoint"
        raise AutoscaleError(
            f"{where}: unknown metric {rule.metric!r} for {scope}: use one of {', '.join(allowed)}"
        )
    if rule.divide_per_instance and rule.metric not in DIVISIBLE_METRICS:
        raise AutoscaleError(
            f"{where}: {rule.metric} cannot be divided per instance (it is not a load the "
            f"instances share): divide_per_instance takes {', '.join(DIVISIBLE_METRICS)}"
        )
    if rule.operator not in OPERATORS:
        raise AutoscaleError(
            f"{where}: operator {rule.operator!r} is not one of {' '.join(OPERATORS)}"
        )
    if rule.time_aggregation not in AGGREGATIONS:
        raise AutoscaleError(
            f"{where}: aggregation {rule.time_aggregation!r} is not one of "
            f"{', '.join(AGGREGATIONS)}"
        )
    if rule.time_grain_statistic not in GRAIN_STATISTICS:
        raise AutoscaleError(
            f"{where}: time grain statistic {rule.time_grain_statistic!r} is not one of "
            f"{', '.join(GRAIN_STATISTICS)}"
        )
    if rule.window_s <= 0 or rule.time_grain_s <= 0 or rule.window_s < rule.time_grain_s:
        raise AutoscaleError(
            f"{where}: window {rule.window_s}s must be positive and at least the time grain "
            f"({rule.time_grain_s}s)"
        )
    if rule.cooldown_s < 0:
        raise AutoscaleError(f"{where}: cooldown {rule.cooldown_s}s must not be negative")
    if rule.scale == "to" and (rule.percent or rule.value < 0):
        raise AutoscaleError(f"{where}: 'to' takes an instance count (0 or more), not a percent")
    if rule.scale != "to" and rule.value < 1:
        raise AutoscaleError(f"{where}: scale {rule.scale} by {rule.value}: must be at least 1")


WEEK_MINUTES = 7 * 1440
REFERENCE_WEEKS = 53  # a year of weeks: every daylight saving change of every zone


def weekly_minutes(profile: AutoscaleProfile) -> list[tuple[int, int]]:
    """The recurrence as [start, end) minute ranges of its local week (Monday 00:00 = 0),
    one per day. An end at or before the start is on the next day (22:00-06:00: the night
    from each day to the next, as az's paired profile that starts at the end means), so a
    range may pass the week's end (Sunday night: up to WEEK_MINUTES + 1440); az's default
    end 23:59 means "to the end of the day"."""
    assert profile.recurrence is not None
    rec = profile.recurrence
    if not rec.days:
        raise AutoscaleError(f"profile {profile.name!r}: a recurrence needs at least one day")
    start = clock_time(rec.start, f"profile {profile.name!r}: start")
    end = clock_time(rec.end, f"profile {profile.name!r}: end")
    first, last = start.hour * 60 + start.minute, end.hour * 60 + end.minute
    if last == 23 * 60 + 59:
        last = 24 * 60  # az's default end 23:59 means "to the end of the day"
    if last == first:
        raise AutoscaleError(
            f"profile {profile.name!r}: recurrence start {rec.start} and end {rec.end} are the "
            "same time (an end before the start runs to that time the next day)"
        )
    if last < first:
        last += 1440  # overnight: until `end` the next day
    days = sorted({DAYS.index(day_name(d)) for d in rec.days})
    return [(day * 1440 + first, day * 1440 + last) for day in days]


def in_recurrence(profile: AutoscaleProfile, now: datetime) -> bool:
    """Is `now` (aware) within the profile's recurrence, read on its time zone's clock?"""
    local = now.astimezone(zone(profile.timezone))
    minute = local.weekday() * 1440 + local.hour * 60 + local.minute
    return any(
        first <= at < last
        for first, last in weekly_minutes(profile)
        for at in (minute, minute + WEEK_MINUTES)  # a Sunday night range runs into Monday
    )


def _utc_ranges(profile: AutoscaleProfile, weeks_from: date) -> list[tuple[datetime, datetime]]:
    """The recurrence's ranges in real time (UTC) over REFERENCE_WEEKS weeks from the Monday
    `weeks_from`, each local start and end converted on its own day (daylight saving)."""
    tz = zone(profile.timezone)
    ranges = weekly_minutes(profile)
    monday = datetime.combine(weeks_from, time())
    found = []
    for week in range(REFERENCE_WEEKS):
        base = monday + timedelta(days=7 * week)
        for first, last in ranges:
            found.append(
                (
                    (base + timedelta(minutes=first)).replace(tzinfo=tz).astimezone(UTC),
                    (base + timedelta(minutes=last)).replace(tzinfo=tz).astimezone(UTC),
                )
            )
    return sorted(found)


def _first_overlap(
    one: list[tuple[datetime, datetime]], other: list[tuple[datetime, datetime]]
) -> datetime | None:
    """The first moment in both (sorted, each list's ranges disjoint), or None."""
    i = j = 0
    while i < len(one) and j < len(other):
        (a, b), (c, d) = one[i], other[j]
        if a < d and c < b:
            return max(a, c)
        if b <= d:
            i += 1
        else:
            j += 1
    return None


def validate(setting: AutoscaleSetting, now: datetime | None = None) -> AutoscaleSetting:
    """The setting with day names normalised, or AutoscaleError for the first problem
    (`now`: where the year of weeks that recurrences are compared over starts)."""
    if not NAME.match(setting.name):
        raise AutoscaleError(
            f"name {setting.name!r} must be 1-63 letters, digits, '.', '-' or '_', starting with "
            "a letter or digit"
        )
    if not setting.endpoint_name or not setting.deployment_name:
        raise AutoscaleError("an autoscale setting targets one online deployment (--resource)")
    if not setting.profiles:
        raise AutoscaleError("an autoscale setting needs a default profile (--count)")
    if len(setting.profiles) > MAX_PROFILES:
        raise AutoscaleError(f"{len(setting.profiles)} profiles: at most {MAX_PROFILES}")
    names = [p.name.lower() for p in setting.profiles]
    if len(set(names)) != len(names):
        raise AutoscaleError("two profiles have the same name")
    unscheduled = [p.name for p in setting.profiles if not p.scheduled]
    if len(unscheduled) != 1:
        raise AutoscaleError(
            f"exactly one profile must have no schedule (the default); found {len(unscheduled)}"
            + (f": {', '.join(unscheduled)}" if unscheduled else "")
        )
    weekly: list[tuple[str, list[tuple[datetime, datetime]]]] = []
    today = (now or datetime.now(UTC)).date()
    weeks_from = today - timedelta(days=today.weekday())
    fixed: list[tuple[str, tuple[datetime, datetime]]] = []
    for profile in setting.profiles:
        where = f"profile {profile.name!r}"
        if not NAME.match(profile.name):
            raise AutoscaleError(f"{where}: name must be letters, digits, '.', '-' or '_'")
        if profile.min_count < 0:
            raise AutoscaleError(f"{where}: minimum {profile.min_count} is negative")
        if profile.min_count > profile.max_count:
            raise AutoscaleError(
                f"{where}: minimum {profile.min_count} is greater than maximum {profile.max_count}"
            )
        if not profile.min_count <= profile.default_count <= profile.max_count:
            raise AutoscaleError(
                f"{where}: default count {profile.default_count} is not within "
                f"[{profile.min_count}, {profile.max_count}]"
            )
        if len(profile.rules) > MAX_RULES:
            raise AutoscaleError(f"{where}: {len(profile.rules)} rules: at most {MAX_RULES}")
        zone(profile.timezone)
        if profile.recurrence is not None and profile.fixed_date is not None:
            raise AutoscaleError(f"{where}: either a recurrence or a fixed date, not both")
        for index, rule in enumerate(profile.rules):
            targets_setting = not rule.metric_endpoint or (
                rule.metric_endpoint == setting.endpoint_name
                and rule.metric_deployment == setting.deployment_name
            )
            _validate_rule(profile.name, index, rule, targets_setting)
        if profile.recurrence is not None:
            profile.recurrence.days = [day_name(d) for d in profile.recurrence.days]
            weekly.append((profile.name, _utc_ranges(profile, weeks_from)))
        if profile.fixed_date is not None:
            fixed.append((profile.name, fixed_bounds(profile)))
    # Compared in real time, each on its own zone's clock (Los Angeles Saturday 00:00-08:00
    # contains UTC Saturday 09:00-12:00; Tokyo's and Los Angeles' Saturday mornings do not
    # meet), over a year of weeks from this one (daylight saving changes included).
    for i, (name, ranges) in enumerate(weekly):
        for other, other_ranges in weekly[:i]:
            both = _first_overlap(ranges, other_ranges)
            if both is not None:
                raise AutoscaleError(
                    f"profiles {other!r} and {name!r} have overlapping recurrences (both "
                    f"apply at {both:%a %Y-%m-%d %H:%M} UTC); Azure would not know which one "
                    "applies"
                )
    for i, (name, (start, end)) in enumerate(fixed):
        for other, (o_start, o_end) in fixed[:i]:
            if start < o_end and o_start < end:
                raise AutoscaleError(f"profiles {other!r} and {name!r} have overlapping dates")
    return setting
