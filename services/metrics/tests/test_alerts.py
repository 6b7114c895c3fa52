"""Alert rules (and autoscale rules, which share `alerts.evaluate`) read closed buckets
only: the bucket still filling would read as a drop in requests per minute, so a `<`
rule fired (or went pending) at the start of every minute, and a 5-minute window counted
6 buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from sluice.common.autoscale.model import AutoscaleRule, AutoscaleSetting
from sluice.common.mongo import Document
from sluice.metrics import alerts
from sluice.metrics.autoscale import Autoscaler


def doc(minute: int, requests: int, deployment: str = "blue") -> Document:
    return {
        "endpoint": "shop",
        "deployment": deployment,
        "minute": datetime.fromtimestamp(minute, UTC),
        "requests": requests,
    }


# Five closed minutes at 600 requests, then the current minute, 5 s old, with 10 so far.
DOCS = [doc(m, 600) for m in (300, 360, 420, 480, 540)] + [doc(600, 10)]
RULE = {"deployment": "blue", "window_s": 300, "metric": "RequestsPerMinute"}


def test_a_window_is_its_closed_buckets() -> None:
    assert alerts.window_of(RULE, 605.0, 60) == (300, 600)
    # 600 has just opened, but 540's last requests may still be landing (SETTLE_S).
    assert alerts.window_of(RULE, 600.0, 60) == (240, 540)
    assert alerts.window_of(RULE, 604.9, 60) == (240, 540)
    assert alerts.window_of(RULE, 599.9, 60) == (240, 540)
    # A grain of a few seconds (the tests') waits half a bucket.
    assert alerts.closed_end(12.0, 5) == 10 and alerts.closed_end(11.9, 5) == 5
    # A window that is not a whole number of buckets takes the bucket it starts in.
    assert alerts.window_of({**RULE, "window_s": 90}, 605.0, 60) == (480, 600)


def test_alert_window_reads_closed_minutes_only() -> None:
    def value(aggregation: str, deployment: str = "blue") -> float | None:
        rule = {**RULE, "aggregation": aggregation, "deployment": deployment}
        return alerts.evaluate(DOCS, rule, 605.0, 60)

    assert value("min") == 600  # not the open minute's 10
    assert value("avg") == 600
    assert value("count") == 5  # a 5-minute window is 5 minutes, not 6
    assert value("total") == 3000
    assert value("max", deployment="") == 600  # the endpoint's total likewise


class Store:
    """The minute documents of a window [start, end), as MetricsStore.minutes answers."""

    def __init__(self, docs: list[Document]):
        self.docs = docs
        self.asked: list[tuple[int, int]] = []

    async def minutes(
        self, endpoint: str, deployment: str | None, start: datetime, end: datetime
    ) -> list[Document]:
        self.asked.append((int(start.timestamp()), int(end.timestamp())))
        return [d for d in self.docs if start <= d["minute"] < end]


class Rules:
    def __init__(self, rule: Document):
        self.rule = rule

    async def list(self) -> list[Document]:
        return [self.rule]

    async def set_state(self, name: str, state: str, since: datetime | None, value: Any) -> None:
        self.rule.update(state=state, state_since=since, last_value=value)


class Publisher:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, spec: Any, data: Any, **_: Any) -> None:
        self.published.append(spec.type)


async def test_a_low_traffic_rule_does_not_fire_at_the_start_of_each_minute() -> None:
    rule = {
        "_id": "quiet",
        "name": "quiet",
        "endpoint": "shop",
        "deployment": "blue",
        "metric": "RequestsPerMinute",
        "aggregation": "min",
        "operator": "<",
        "threshold": 100,
        "window_s": 300,
        "for_s": 0,
        "state": "ok",
        "state_since": None,
    }
    store, publisher = Store(DOCS), Publisher()
    evaluator = alerts.AlertEvaluator(
        cast(Any, Rules(rule)), cast(Any, store), cast(Any, publisher), 60
    )
    await evaluator.tick(datetime.fromtimestamp(605, UTC))
    assert store.asked == [(300, 600)]  # the open minute is not even read
    assert (rule["state"], rule["last_value"], publisher.published) == ("ok", 600, [])


async def test_the_autoscaler_reads_the_same_closed_buckets() -> None:
    store = Store(DOCS)
    autoscaler = Autoscaler(cast(Any, None), cast(Any, store), bucket_s=60)
    setting = AutoscaleSetting(name="s", endpoint_name="shop", deployment_name="blue")
    rule = AutoscaleRule(
        metric="RequestsPerMinute", time_aggregation="count", window_s=300, time_grain_s=60
    )
    value = await autoscaler._value(setting, rule, datetime.fromtimestamp(605, UTC))
    assert (value, store.asked) == (5, [(300, 600)])


def with_instances(
    minute: int, requests: int, instances: int, deployment: str = "blue"
) -> Document:
    """A minute of `requests` served by `instances` instances (their usage samples)."""
    return {
        **doc(minute, requests, deployment),
        "usage_samples": instances,
        "cpu_sum": 10.0 * instances,
        "instances": {f"i{n}": 1 for n in range(instances)},
    }


PER_INSTANCE = AutoscaleRule(
    metric="RequestsPerMinute",
    operator=">",
    threshold=300,
    window_s=300,
    time_grain_s=60,
    divide_per_instance=True,
)
SHOP_BLUE = AutoscaleSetting(name="s", endpoint_name="shop", deployment_name="blue")
AT = datetime.fromtimestamp(605, UTC)  # the window is the closed minutes 300 ... 540


async def per_instance(docs: list[Document], rule: AutoscaleRule = PER_INSTANCE) -> float | None:
    autoscaler = Autoscaler(cast(Any, None), cast(Any, Store(docs)), bucket_s=60)
    return await autoscaler._value(SHOP_BLUE, rule, AT)


async def test_requests_per_instance_divide_each_minute_by_its_instances() -> None:
    """Azure's dividePerInstance: 1,000 requests a minute over 4 instances is 250 each, under
    a 300 threshold; 1,400 is 350, over it; without it the total (1,000) is compared."""
    four = [with_instances(m, 1000, 4) for m in (300, 360, 420, 480, 540)]
    assert await per_instance(four) == 250
    assert (
        await per_instance(four, PER_INSTANCE.model_copy(update={"divide_per_instance": False}))
        == 1000
    )
    assert (
        await per_instance([with_instances(m, 1400, 4) for m in (300, 360, 420, 480, 540)]) == 350
    )
    # Each minute by its own count (not the window's total by the window's largest count):
    # 600 over 2, then 600 over 3 (a scale-out mid-window) is 300 and 200, avg 250.
    mixed = [with_instances(m, 600, 2) for m in (300, 360)] + [
        with_instances(m, 600, 3) for m in (420, 480, 540)
    ]
    assert await per_instance(mixed) == pytest.approx((300 * 2 + 200 * 3) / 5)
    # A minute in which no instance reported has no per-instance value; the open one is not read.
    gap = [with_instances(300, 800, 4), doc(360, 800), with_instances(600, 10_000, 1)]
    assert (
        await per_instance(gap, PER_INSTANCE.model_copy(update={"time_aggregation": "max"})) == 200
    )


async def test_an_endpoint_metric_is_divided_by_the_target_deployments_instances() -> None:
    """The endpoint's requests (blue's and green's) per instance of blue, the scaled one."""
    docs = [with_instances(m, 900, 3) for m in (300, 360, 420, 480, 540)]
    docs += [with_instances(m, 300, 5, "green") for m in (300, 360, 420, 480, 540)]
    rule = PER_INSTANCE.model_copy(update={"metric_endpoint": "shop"})
    assert await per_instance(docs, rule) == 400  # (900 + 300) / 3
