"""Alert rules (and autoscale rules, which share `alerts.evaluate`) read closed buckets
only: the bucket still filling would read as a drop in requests per minute, so a `<`
rule fired (or went pending) at the start of every minute, and a 5-minute window counted
6 buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

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
    assert alerts.window_of(RULE, 600.0, 60) == (300, 600)  # 600 has just opened
    assert alerts.window_of(RULE, 599.9, 60) == (240, 540)
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
