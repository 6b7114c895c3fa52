"""The autoscale evaluator, pure: (setting, current count, metric values, clock) -> a
decision or none. No I/O and no clock of its own, so every Azure rule below is a table
test (`libs/common/tests/test_autoscale_engine.py`).

Azure Monitor's semantics (MicrosoftDocs "Understand autoscale settings"):
- **Which profile**: a fixed-date profile whose range contains now, else a recurring one
  whose day and hours contain now (in its time zone; an end before the start is the
  next day's: 22:00-06:00 runs through the night), else the default profile.
- **Bounds first**: a count outside the active profile's [min, max] (a schedule took
  over, or the setting changed) is moved to the nearest bound at once.
- **No metrics**: when no rule has a value and the count is below the profile's
  default, the count becomes the default.
- **Scale out if any** out-rule fires (the largest resulting count wins); otherwise
  **scale in only if all** in-rules fire (the smallest reduction wins).
- **Cool-down per rule**: a rule acts only once its `cooldown_s` has passed since the
  setting's last scale action.
- **No flapping**: before scaling in, per-instance metrics (CPU, memory, and any rule's
  metric divided per instance) are projected onto the smaller count (value x current /
  new); if an out-rule would fire on the projection, the reduction shrinks until none
  would, or is skipped.
- The result never leaves [min, max].

`target_count` is the other rule kind, Kubernetes' HPA rule, which the provisioner's
`scale_settings: type: target_utilization` uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sluice.common.autoscale.condition import format_condition
from sluice.common.autoscale.model import (
    AutoscaleProfile,
    AutoscaleRule,
    AutoscaleSetting,
    fixed_bounds,
    in_recurrence,
)

COMPARE = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
HPA_TOLERANCE = 0.1


@dataclass(frozen=True)
class Decision:
    old_count: int
    new_count: int
    profile: str
    reason: str  # rule | bounds | default
    rule_index: int | None = None
    rule: str = ""  # the rule as az writes it: condition and action
    metric: str = ""
    value: float | None = None


def describe(rule: AutoscaleRule) -> str:
    condition = format_condition(
        rule.metric, rule.operator, rule.threshold, rule.time_aggregation, rule.window_s
    )
    amount = f"{rule.value}%" if rule.percent else str(rule.value)
    each = " per instance" if rule.divide_per_instance else ""
    return f"{condition}{each} -> {rule.scale} {amount}"


def active_profile(setting: AutoscaleSetting, now: datetime) -> AutoscaleProfile:
    """Fixed date beats recurrence beats default (validated settings have one default)."""
    for profile in setting.profiles:
        if profile.fixed_date is not None:
            first, last = fixed_bounds(profile)
            if first <= now < last:
                return profile
    for profile in setting.profiles:
        if profile.recurrence is not None and in_recurrence(profile, now):
            return profile
    return next(p for p in setting.profiles if not p.scheduled)


def fires(rule: AutoscaleRule, value: float | None) -> bool:
    return value is not None and bool(COMPARE[rule.operator](value, rule.threshold))


def apply_action(rule: AutoscaleRule, current: int) -> int:
    """The count the rule's action asks for, before bounds."""
    if rule.scale == "to":
        return rule.value
    step = max(1, math.ceil(current * rule.value / 100)) if rule.percent else rule.value
    return current + step if rule.scale == "out" else current - step


def _clamp(count: int, profile: AutoscaleProfile) -> int:
    return min(max(count, profile.min_count), profile.max_count)


def _would_flap(
    profile: AutoscaleProfile, values: Sequence[float | None], current: int, new: int
) -> bool:
    """Would an out-rule fire once the load of `current` instances is spread over `new`?
    (At zero no instance carries load; waking from zero is the activator's job.)"""
    if new == 0:
        return False
    for rule, value in zip(profile.rules, values, strict=True):
        if value is None or not rule.per_instance:
            continue
        if apply_action(rule, current) > current and fires(rule, value * current / new):
            return True
    return False


def decide(
    profile: AutoscaleProfile,
    current: int,
    values: Sequence[float | None],
    now: float,
    last_action_at: float | None,
) -> Decision | None:
    """The next count for `current` instances under `profile`; `values[i]` is rule i's
    aggregated metric (None: no data), `now`/`last_action_at` epoch seconds."""
    bounded = _clamp(current, profile)
    if bounded != current:
        return Decision(current, bounded, profile.name, "bounds")
    # No data at all: Azure falls back to the default count (its metrics pipeline is
    # down). At zero (a minimum-0 profile) no data is what zero looks like, though: no
    # instance reports and no request arrived; only a held request wakes it (activator).
    if all(v is None for v in values) and 0 < current < profile.default_count:
        return Decision(current, profile.default_count, profile.name, "default")

    def cooled(rule: AutoscaleRule) -> bool:
        return last_action_at is None or now - last_action_at >= rule.cooldown_s

    outs, ins = [], []
    for index, (rule, value) in enumerate(zip(profile.rules, values, strict=True)):
        wanted = apply_action(rule, current)
        if wanted > current:
            outs.append((index, rule, value, wanted))
        elif wanted < current or rule.scale == "in":
            ins.append((index, rule, value, wanted))

    fired_out = [o for o in outs if fires(o[1], o[2]) and cooled(o[1])]
    if fired_out:
        index, rule, value, wanted = max(fired_out, key=lambda o: o[3])
        new = _clamp(wanted, profile)
        if new > current:
            return Decision(
                current, new, profile.name, "rule", index, describe(rule), rule.metric, value
            )
        return None
    if not ins or not all(fires(i[1], i[2]) and cooled(i[1]) for i in ins):
        return None
    index, rule, value, wanted = max(ins, key=lambda i: i[3])  # the smallest reduction
    new = _clamp(wanted, profile)
    while new < current and _would_flap(profile, values, current, new):
        new += 1
    if new >= current:
        return None
    return Decision(current, new, profile.name, "rule", index, describe(rule), rule.metric, value)


def target_count(current: int, utilization: float, target: float, lowest: int, highest: int) -> int:
    """The HPA rule: ceil(current x utilization / target) within [lowest, highest], no change
    within 10% of the target (utilization and target as fractions)."""
    if current == 0:
        return lowest
    ratio = utilization / target
    if abs(ratio - 1) <= HPA_TOLERANCE:
        return min(max(current, lowest), highest)
    return min(max(math.ceil(current * ratio), lowest), highest)
