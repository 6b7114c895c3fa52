"""The autoscale evaluator, table-tested: profiles, rule combination, cool-downs,
bounds, flapping; the clock is a parameter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.common.autoscale.condition import ConditionError, parse_condition, parse_period
from sluice.common.autoscale.engine import active_profile, decide, target_count
from sluice.common.autoscale.model import (
    AutoscaleError,
    AutoscaleFixedDate,
    AutoscaleProfile,
    AutoscaleRecurrence,
    AutoscaleRule,
    AutoscaleSetting,
    validate,
)

CPU_OUT = AutoscaleRule(
    metric="CpuUtilizationPercentage",
    operator=">",
    threshold=70,
    scale="out",
    value=2,
    cooldown_s=60,
)
CPU_IN = AutoscaleRule(
    metric="CpuUtilizationPercentage",
    operator="<",
    threshold=30,
    scale="in",
    value=1,
    cooldown_s=60,
)
RPM_OUT = AutoscaleRule(
    metric="RequestsPerMinute", operator=">", threshold=600, scale="out", value=1, cooldown_s=60
)
RPM_IN = AutoscaleRule(
    metric="RequestsPerMinute", operator="<", threshold=100, scale="in", value=2, cooldown_s=60
)


def profile(*rules: AutoscaleRule, lo: int = 1, default: int = 1, hi: int = 5) -> AutoscaleProfile:
    return AutoscaleProfile(
        name="default", min_count=lo, default_count=default, max_count=hi, rules=list(rules)
    )


@pytest.mark.parametrize(
    ("rules", "current", "values", "last", "expected", "why"),
    [
        ((CPU_OUT,), 2, [85.0], None, 4, "out-rule fires: +2"),
        ((CPU_OUT,), 4, [85.0], None, 5, "never above max"),
        ((CPU_OUT,), 5, [85.0], None, None, "at max: nothing to do"),
        ((CPU_OUT,), 2, [50.0], None, None, "below threshold"),
        ((CPU_OUT,), 2, [85.0], 970.0, None, "cool-down of 60 s since the last action"),
        ((CPU_OUT,), 2, [85.0], 940.0, 4, "cool-down passed"),
        ((CPU_OUT, RPM_OUT), 2, [50.0, 700.0], None, 3, "any out-rule fires"),
        ((CPU_OUT, RPM_OUT), 2, [85.0, 700.0], None, 4, "the largest scale-out wins"),
        ((CPU_IN, RPM_IN), 4, [20.0, 50.0], None, 3, "all in-rules: the smallest reduction"),
        ((CPU_IN, RPM_IN), 4, [20.0, 500.0], None, None, "in only if ALL in-rules agree"),
        ((CPU_IN, RPM_IN), 4, [20.0, None], None, None, "an in-rule without data does not agree"),
        ((CPU_OUT, CPU_IN), 4, [85.0, 20.0], None, 5, "out beats in"),
        ((CPU_IN,), 1, [5.0], None, None, "never below min"),
        ((CPU_IN,), 3, [5.0], 990.0, None, "scale-in also waits for its cool-down"),
        ((), 0, [], None, 1, "below min: up to min at once"),
        ((CPU_OUT,), 7, [None], None, 5, "above max: down to max at once, no cool-down"),
    ],
)
def test_rules(
    rules: tuple[AutoscaleRule, ...],
    current: int,
    values: list[float | None],
    last: float | None,
    expected: int | None,
    why: str,
) -> None:
    decision = decide(profile(*rules), current, values, now=1000.0, last_action_at=last)
    assert (decision.new_count if decision else None) == expected, why


def test_decision_names_rule_and_value() -> None:
    decision = decide(profile(CPU_OUT, RPM_OUT), 2, [85.0, 10.0], 1000.0, None)
    assert decision is not None
    assert (decision.rule_index, decision.metric, decision.value) == (
        0,
        "CpuUtilizationPercentage",
        85.0,
    )
    assert decision.rule == "CpuUtilizationPercentage > 70 avg 5m -> out 2"
    assert (decision.old_count, decision.new_count, decision.reason) == (2, 4, "rule")


def test_no_metrics_below_default_goes_to_default() -> None:
    decision = decide(profile(CPU_OUT, default=3), 2, [None], 1000.0, None)
    assert decision is not None and (decision.new_count, decision.reason) == (3, "default")
    assert decide(profile(CPU_OUT, default=3), 4, [None], 1000.0, None) is None


def test_no_flapping_scale_in_shrinks_or_is_skipped() -> None:
    # 4 instances at 40% CPU: "in 3" would leave 1 instance at 160% -> the out-rule (> 70)
    # would fire; 3 instances -> 53%: fine. So the reduction shrinks to 1.
    big_in = CPU_IN.model_copy(update={"threshold": 45.0, "value": 3})
    decision = decide(profile(CPU_OUT, big_in), 4, [40.0, 40.0], 1000.0, None)
    assert decision is not None and decision.new_count == 3
    # 2 instances at 40%: 1 instance at 80% would scale out again -> no scale-in at all.
    assert decide(profile(CPU_OUT, big_in), 2, [40.0, 40.0], 1000.0, None) is None


def test_min_zero_an_idle_deployment_goes_to_zero_and_never_flaps_there() -> None:
    idle = profile(CPU_OUT, RPM_IN, lo=0, default=0, hi=3)
    decision = decide(idle, 1, [50.0, 0.0], 1000.0, None)
    assert decision is not None and decision.new_count == 0
    assert decide(idle, 0, [None, 0.0], 1000.0, None) is None  # at zero: stays (no data)
    # A default above the minimum (az's `--count 1 --min-count 0`): a window with no data
    # at all at zero is no reason to start an instance (it woke the deployment every window).
    woken_by_nothing = profile(CPU_OUT, RPM_IN, lo=0, default=1, hi=3)
    assert decide(woken_by_nothing, 0, [None, None], 1000.0, None) is None


def test_percent_and_exact_actions() -> None:
    half = CPU_OUT.model_copy(update={"value": 50, "percent": True})
    assert (d := decide(profile(half, hi=10), 4, [90.0], 0, None)) and d.new_count == 6
    to_three = RPM_OUT.model_copy(update={"scale": "to", "value": 3})
    assert (d := decide(profile(to_three), 1, [900.0], 0, None)) and d.new_count == 3


WEEKDAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
SATURDAY_LA = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)  # Saturday 10:00 in Los Angeles
SUNDAY_UTC_MONDAY_TOKYO = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)  # Monday 05:00 in Tokyo


def schedule_setting() -> AutoscaleSetting:
    return validate(
        AutoscaleSetting(
            name="s",
            endpoint_name="e",
            deployment_name="d",
            profiles=[
                profile(CPU_OUT),
                AutoscaleProfile(
                    name="weekend",
                    min_count=2,
                    default_count=2,
                    max_count=2,
                    timezone="Pacific Standard Time",
                    recurrence=AutoscaleRecurrence(days=["sat", "sun"]),
                ),
                AutoscaleProfile(
                    name="black-friday",
                    min_count=4,
                    default_count=4,
                    max_count=5,
                    fixed_date=AutoscaleFixedDate(
                        start="2026-11-27T00:00:00", end="2026-11-29T00:00:00"
                    ),
                ),
            ],
        )
    )


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (WEEKDAY, "default"),
        (datetime(2026, 12, 5, 18, 0, tzinfo=UTC), "weekend"),  # Saturday in Los Angeles
        (datetime(2026, 12, 5, 7, 0, tzinfo=UTC), "default"),  # still Friday in Los Angeles
        (SATURDAY_LA, "black-friday"),  # fixed date beats the recurrence
    ],
)
def test_profile_precedence(now: datetime, expected: str) -> None:
    assert active_profile(schedule_setting(), now).name == expected


def test_schedule_takes_over_with_its_bounds() -> None:
    setting = schedule_setting()
    saturday = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
    weekend = active_profile(setting, saturday)
    decision = decide(weekend, 5, [], saturday.timestamp(), saturday.timestamp() - 1)
    assert decision is not None and (decision.new_count, decision.profile) == (2, "weekend")
    assert decision.reason == "bounds"


def test_hpa_rule() -> None:
    assert target_count(2, 1.4, 0.7, 1, 5) == 4
    assert target_count(2, 0.75, 0.7, 1, 5) == 2  # within 10%
    assert target_count(4, 0.1, 0.7, 1, 5) == 1
    assert target_count(4, 3.0, 0.7, 1, 5) == 5


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("CpuUtilizationPercentage > 70 avg 5m", ("CpuUtilizationPercentage", ">", 70, "avg", 300)),
        ("RequestLatency_P99 >= 250.5 max 1h30m", ("RequestLatency_P99", ">=", 250.5, "max", 5400)),
        (
            '"azureml" RequestsPerMinute<10 total PT10M',
            ("RequestsPerMinute", "<", 10, "total", 600),
        ),
    ],
)
def test_condition_grammar(text: str, parsed: tuple[object, ...]) -> None:
    c = parse_condition(text)
    assert (c.metric, c.operator, c.threshold, c.aggregation, c.window_s) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("CpuUtilizationPercentage 70 avg 5m", "does not read as"),
        ("CpuUtilizationPercentage > 70 mean 5m", "aggregation 'mean'"),
        ("CpuUtilizationPercentage > 70 avg 5 minutes", "unexpected"),
        ("CpuUtilizationPercentage > 70 avg 5x", "not a period"),
        ("RequestsPerMinute > 7 avg 5m where deployment == blue", "dimension filters"),
    ],
)
def test_bad_conditions(text: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        parse_condition(text)


def test_periods() -> None:
    assert parse_period("1d2h") == 93600 and parse_period("PT45S") == 45


def base(**changes: object) -> AutoscaleSetting:
    setting = AutoscaleSetting(
        name="s", endpoint_name="e", deployment_name="d", profiles=[profile(CPU_OUT)]
    )
    return setting.model_copy(update=changes)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (base(name="bad name"), "name 'bad name'"),
        (base(profiles=[profile(lo=3, default=3, hi=2)]), "minimum 3 is greater than maximum 2"),
        (base(profiles=[profile(lo=1, default=7, hi=5)]), "default count 7 is not within"),
        (base(profiles=[profile(lo=-1, default=0, hi=2)]), "minimum -1 is negative"),
        (
            base(profiles=[profile(CPU_OUT.model_copy(update={"metric": "Nope"}))]),
            "unknown metric 'Nope' for a deployment",
        ),
        (
            base(profiles=[profile(RPM_OUT.model_copy(update={"metric": "RequestLatency"}))]),
            "unknown metric 'RequestLatency' for a deployment",
        ),
        (
            base(profiles=[profile(CPU_OUT.model_copy(update={"metric_endpoint": "e"}))]),
            "unknown metric 'CpuUtilizationPercentage' for an endpoint",
        ),
        (base(profiles=[profile(CPU_OUT.model_copy(update={"operator": "=>"}))]), "operator"),
        (base(profiles=[profile(CPU_OUT.model_copy(update={"value": 0}))]), "at least 1"),
        (base(profiles=[profile(), profile()]), "same name"),
        (
            base(
                profiles=[
                    profile(),
                    AutoscaleProfile(
                        name="x",
                        timezone="Mars/Olympus",
                        recurrence=AutoscaleRecurrence(days=["sat"]),
                    ),
                ]
            ),
            "unknown time zone",
        ),
        (
            base(
                profiles=[
                    profile(),
                    AutoscaleProfile(name="x", recurrence=AutoscaleRecurrence(days=["caturday"])),
                ]
            ),
            "not a day of the week",
        ),
        (
            base(
                profiles=[
                    profile(),
                    AutoscaleProfile(
                        name="weekend", recurrence=AutoscaleRecurrence(days=["sat", "sun"])
                    ),
                    AutoscaleProfile(
                        name="sunday-morning",
                        recurrence=AutoscaleRecurrence(days=["sun"], start="08:00", end="12:00"),
                    ),
                ]
            ),
            "overlapping recurrences",
        ),
        (
            base(
                profiles=[
                    profile(),
                    AutoscaleProfile(
                        name="x",
                        fixed_date=AutoscaleFixedDate(
                            start="2026-12-02T00:00", end="2026-12-01T00:00"
                        ),
                    ),
                ]
            ),
            "start is not before end",
        ),
    ],
)
def test_invalid_settings(setting: AutoscaleSetting, message: str) -> None:
    with pytest.raises(AutoscaleError, match=message):
        validate(setting)


@pytest.mark.parametrize("source", [{}, {"metric_endpoint": "e"}])
def test_connections_active_is_a_metric_of_deployments_and_endpoints(
    source: dict[str, str],
) -> None:
    rule = RPM_OUT.model_copy(update={"metric": "ConnectionsActive", "threshold": 50, **source})
    validate(base(profiles=[profile(rule)]))


def test_disjoint_recurrences_are_fine() -> None:
    validate(
        base(
            profiles=[
                profile(),
                AutoscaleProfile(name="sat", recurrence=AutoscaleRecurrence(days=["saturday"])),
                AutoscaleProfile(
                    name="sun-am", recurrence=AutoscaleRecurrence(days=["Sun"], end="12:00")
                ),
                AutoscaleProfile(
                    name="sun-pm", recurrence=AutoscaleRecurrence(days=["sun"], start="12:00")
                ),
            ]
        )
    )


def recurring(
    name: str, days: list[str], start: str, end: str, tz: str = "UTC"
) -> AutoscaleProfile:
    return AutoscaleProfile(
        name=name,
        timezone=tz,
        min_count=2,
        default_count=2,
        max_count=2,
        recurrence=AutoscaleRecurrence(days=days, start=start, end=end),
    )


NIGHT = recurring("night", ["mon", "tue", "wed", "thu", "fri"], "22:00", "06:00")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 12, 1, 3, 0, tzinfo=UTC), "night"),  # Tuesday 03:00: Monday's night
        (datetime(2026, 12, 1, 22, 30, tzinfo=UTC), "night"),  # Tuesday 22:30
        (datetime(2026, 12, 1, 6, 0, tzinfo=UTC), "default"),  # Tuesday 06:00: ended
        (datetime(2026, 12, 1, 12, 0, tzinfo=UTC), "default"),  # Tuesday noon
        (datetime(2026, 11, 30, 3, 0, tzinfo=UTC), "default"),  # Monday 03:00: no Sunday night
        (datetime(2026, 12, 5, 5, 59, tzinfo=UTC), "night"),  # Saturday 05:59: Friday's night
        (datetime(2026, 12, 5, 22, 0, tzinfo=UTC), "default"),  # Saturday 22:00
    ],
)
def test_an_overnight_recurrence_runs_until_its_end_the_next_day(
    now: datetime, expected: str
) -> None:
    """az's --start 22:00 --end 06:00 (its paired profile starts at 06:00): the night."""
    setting = validate(base(profiles=[profile(), NIGHT]))
    assert active_profile(setting, now).name == expected


def test_a_sunday_night_runs_into_monday() -> None:
    setting = validate(base(profiles=[profile(), recurring("sun", ["sun"], "20:00", "04:00")]))
    assert active_profile(setting, datetime(2026, 11, 30, 3, 0, tzinfo=UTC)).name == "sun"
    assert active_profile(setting, datetime(2026, 11, 30, 4, 0, tzinfo=UTC)).name == "default"


def test_an_overnight_recurrence_overlaps_the_next_mornings_profile() -> None:
    early = recurring("early", ["tue"], "05:00", "09:00")
    with pytest.raises(AutoscaleError, match="'night' and 'early' have overlapping recurrences"):
        validate(base(profiles=[profile(), NIGHT, early]))
    validate(base(profiles=[profile(), NIGHT, recurring("later", ["tue"], "06:00", "09:00")]))


def test_a_recurrence_needs_a_window() -> None:
    with pytest.raises(AutoscaleError, match="are the same time"):
        validate(base(profiles=[profile(), recurring("x", ["mon"], "06:00", "06:00")]))


LA = "America/Los_Angeles"


@pytest.mark.parametrize(
    ("one", "other", "overlap"),
    [
        # Los Angeles' Saturday 00:00-08:00 is UTC 08:00-16:00 (07:00-15:00 in summer)
        (
            recurring("la", ["sat"], "00:00", "08:00", LA),
            recurring("utc", ["sat"], "09:00", "12:00"),
            True,
        ),
        (
            recurring("la", ["sat"], "00:00", "06:00", LA),
            recurring("utc", ["sat"], "15:00", "18:00"),
            False,
        ),
        # Tokyo's Saturday morning is Friday 15:00 - Saturday 03:00 UTC: Los Angeles' is later
        (
            recurring("tokyo", ["sat"], "00:00", "12:00", "Asia/Tokyo"),
            recurring("la", ["sat"], "00:00", "12:00", LA),
            False,
        ),
        # London is UTC in winter only: Saturday 12:00-13:00 then is both
        (
            recurring("london", ["sat"], "00:00", "13:00", "Europe/London"),
            recurring("utc", ["sat"], "12:00", "18:00"),
            True,
        ),
        # ... and in summer only (BST: London 13:00-14:00 is UTC 12:00-13:00)
        (
            recurring("london", ["sat"], "13:00", "18:00", "Europe/London"),
            recurring("utc", ["sat"], "06:00", "12:30"),
            True,
        ),
        (
            recurring("london", ["sat"], "13:00", "18:00", "Europe/London"),
            recurring("utc", ["sat"], "06:00", "12:00"),
            False,
        ),
        # a Windows zone name is the same clock as its IANA one
        (
            recurring("pst", ["sun"], "00:00", "23:59", "Pacific Standard Time"),
            recurring("la", ["sat"], "22:00", "02:00", LA),
            True,
        ),
    ],
)
def test_recurrences_are_compared_in_real_time(
    one: AutoscaleProfile, other: AutoscaleProfile, overlap: bool
) -> None:
    setting = base(profiles=[profile(), one, other])
    if overlap:
        with pytest.raises(AutoscaleError, match="overlapping recurrences"):
            validate(setting, datetime(2026, 11, 29, tzinfo=UTC))
    else:
        validate(setting, datetime(2026, 11, 29, tzinfo=UTC))


PER_INSTANCE_OUT = RPM_OUT.model_copy(update={"threshold": 300, "divide_per_instance": True})
PER_INSTANCE_IN = RPM_IN.model_copy(
    update={"threshold": 150, "value": 2, "divide_per_instance": True}
)


def test_requests_per_instance_scale_out_and_in_without_flapping() -> None:
    """A rule on requests per instance (Azure's dividePerInstance): the value is already per
    instance (the metrics service divides each minute), and a scale-in projects it onto the
    smaller count as it does CPU: 4 instances at 100 each -> 2 would be 200 each, fine; at 140
    each 2 would be 280, also fine, but 1 (in 3) would be 560, over the out-rule's 300."""
    rules = profile(PER_INSTANCE_OUT, PER_INSTANCE_IN, hi=8)
    assert decide(rules, 4, [250.0, 250.0], 1000.0, None) is None  # 1,000 rpm over 4
    out = decide(rules, 4, [350.0, 350.0], 1000.0, None)  # 1,400 rpm over 4
    assert out is not None and out.new_count == 5
    assert out.rule == "RequestsPerMinute > 300 avg 5m per instance -> out 1"
    scale_in = decide(rules, 4, [100.0, 100.0], 1000.0, None)
    assert scale_in is not None and scale_in.new_count == 2
    big_in = PER_INSTANCE_IN.model_copy(update={"value": 3})
    shrunk = decide(profile(PER_INSTANCE_OUT, big_in, hi=8), 4, [140.0, 140.0], 1000.0, None)
    assert shrunk is not None and shrunk.new_count == 2  # not 1: 560 per instance would scale out
    # The same rules on the total (no dividePerInstance) project nothing: a total does not
    # grow when the instances are fewer.
    total_out = PER_INSTANCE_OUT.model_copy(update={"divide_per_instance": False})
    total_in = big_in.model_copy(update={"divide_per_instance": False})
    plain = decide(profile(total_out, total_in, hi=8), 4, [140.0, 140.0], 1000.0, None)
    assert plain is not None and plain.new_count == 1


@pytest.mark.parametrize(
    "metric", ["CpuUtilizationPercentage", "DeploymentCapacity", "RequestLatency_P99"]
)
def test_only_a_shared_load_divides_per_instance(metric: str) -> None:
    rule = PER_INSTANCE_OUT.model_copy(update={"metric": metric})
    with pytest.raises(AutoscaleError, match=f"rule 0: {metric} cannot be divided per instance"):
        validate(base(profiles=[profile(rule)]))
    for metric in ("RequestsPerMinute", "ConnectionsActive"):
        validate(base(profiles=[profile(rule.model_copy(update={"metric": metric}))]))
    endpoint_bytes = rule.model_copy(update={"metric": "NetworkBytes", "metric_endpoint": "e"})
    validate(base(profiles=[profile(endpoint_bytes)]))
