"""Alert rules: a metric of an endpoint or deployment, aggregated over a window, compared
with a threshold; true for `for_s` seconds it fires, false again it resolves.

Rules and their state live in MongoDB (`alert_rules`), so a restart neither forgets
a firing alert nor fires it twice. Firing and resolving publish CloudEvents
`sluice.alert.fired` / `sluice.alert.resolved` (subject: the rule's name) on
`<prefix>.alert.fired|resolved`, with the value that decided it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events import EventPublisher
from sluice.common.events.catalogue import ALERT_FIRED, ALERT_RESOLVED, AlertChanged
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.metrics import query
from sluice.metrics.store import MetricsStore

log = get_logger(__name__)
ALERT_RULES = "alert_rules"
ACTOR = "sluice/metrics"
METRICS = tuple(query.Step(0).values(60))  # the Azure names a rule can watch
AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda v: sum(v) / len(v),
    "min": min,
    "max": max,
    "total": sum,
    "count": lambda v: float(len(v)),
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class RuleError(ValueError):
    """A rule that cannot be evaluated; the message names the field and what is allowed."""


def validate(rule: Document, bucket_s: int) -> None:
    if not NAME.match(rule["name"]):
        raise RuleError(
            f"name {rule['name']!r} must be 1-63 letters, digits, '-' or '_', starting with a "
            "letter or digit"
        )
    if rule["metric"] not in METRICS:
        raise RuleError(f"unknown metric {rule['metric']!r}: use one of {', '.join(METRICS)}")
    if rule["aggregation"] not in AGGREGATIONS:
        raise RuleError(
            f"unknown aggregation {rule['aggregation']!r}: use one of {', '.join(AGGREGATIONS)}"
        )
    if rule["operator"] not in OPERATORS:
        raise RuleError(f"unknown operator {rule['operator']!r}: use one of {' '.join(OPERATORS)}")
    if not rule["endpoint"]:
        raise RuleError("scope.endpoint is required")
    if rule["window_s"] < bucket_s:
        raise RuleError(
            f"window {rule['window_s']}s is shorter than the metrics' {bucket_s}s granularity"
        )
    if rule["for_s"] < 0:
        raise RuleError(f"for {rule['for_s']}s must not be negative")


# How long after a bucket ends its last requests have landed: Envoy's 1 s access-log buffer
# and the collector's 1 s flush (capped at half a bucket for the tests' short grains).
SETTLE_S = 5


def closed_end(now: float, bucket_s: int) -> int:
    """Where the closed buckets end at `now` (epoch seconds): the start of the bucket still
    filling, or of the one before it while that one's last requests may still be on their
    way (`SETTLE_S`). Alert rules and autoscale rules read only the buckets before it: a
    bucket still filling would read as a drop in requests per minute (or bytes, or errors)."""
    epoch = int(now - min(SETTLE_S, bucket_s // 2))
    return epoch - epoch % bucket_s


def window_of(rule: Document, now: float, bucket_s: int) -> tuple[int, int]:
    """The buckets a rule reads at `now`: [oldest, end), `end` the start of the bucket still
    filling and `oldest` the start of the bucket holding `end - window_s` (a window of 5
    minutes at a 1-minute grain is the last 5 closed minutes)."""
    end = closed_end(now, bucket_s)
    oldest = end - rule["window_s"]
    return oldest - oldest % bucket_s, end


def bucket_values(
    docs: list[Document], rule: Document, now: float, bucket_s: int
) -> dict[int, float]:
    """Each closed bucket of the rule's window at `now` (`window_of`) that has a value of
    its metric -> that value (bucket start, epoch seconds)."""
    series = query.steps(docs, step_s=bucket_s, total_only=not rule["deployment"])
    steps = series.get(rule["deployment"] or query.ENDPOINT_TOTAL, {})
    oldest, end = window_of(rule, now, bucket_s)
    return {
        start: v
        for start, step in steps.items()
        if oldest <= start < end and (v := step.values(bucket_s)[rule["metric"]]) is not None
    }


def aggregate(values: list[float], aggregation: str) -> float | None:
    """The window's value (None: no data to compare; `total` and `count` of nothing: 0)."""
    if aggregation in ("total", "count") and not values:
        return 0.0
    return AGGREGATIONS[aggregation](values) if values else None


def evaluate(docs: list[Document], rule: Document, now: float, bucket_s: int) -> float | None:
    """The rule's aggregated value over its window of closed buckets at `now` (`window_of`;
    None: no data to compare)."""
    return aggregate(list(bucket_values(docs, rule, now, bucket_s).values()), rule["aggregation"])


def evaluate_per_instance(
    docs: list[Document],
    instance_docs: list[Document],
    rule: Document,
    now: float,
    bucket_s: int,
) -> float | None:
    """Azure's dividePerInstance: each bucket's value divided by the instance count
    (DeploymentCapacity) in that bucket of the deployment `rule["per_instance_of"]`, whose
    minute documents are `instance_docs`, then aggregated over the window. A bucket in
    which no instance reported has no per-instance value (it is left out)."""
    counts = bucket_values(
        instance_docs,
        {**rule, "deployment": rule["per_instance_of"], "metric": "DeploymentCapacity"},
        now,
        bucket_s,
    )
    values = bucket_values(docs, rule, now, bucket_s)
    divided = [v / counts[start] for start, v in values.items() if counts.get(start)]
    return aggregate(divided, rule["aggregation"])


class AlertRules:
    """Storage of the rules and their state."""

    def __init__(self, db: AsyncDatabase[Document]):
        self._rules = db[ALERT_RULES]

    async def create(self, rule: Document) -> Document:
        doc = {**rule, "_id": rule["name"], "state": "ok", "state_since": None, "last_value": None}
        await self._rules.insert_one(doc)
        return doc

    async def list(self, endpoint: str | None = None) -> list[Document]:
        found = self._rules.find({"endpoint": endpoint} if endpoint else {}).sort("_id", 1)
        return [doc async for doc in found]

    async def delete(self, name: str) -> bool:
        return (await self._rules.delete_one({"_id": name})).deleted_count == 1

    async def set_state(self, name: str, state: str, since: datetime | None, value: Any) -> None:
        await self._rules.update_one(
            {"_id": name}, {"$set": {"state": state, "state_since": since, "last_value": value}}
        )


class AlertEvaluator:
    """Runs every rule once per call of `tick` (the aggregator calls it every few seconds)."""

    def __init__(
        self, rules: AlertRules, store: MetricsStore, publisher: EventPublisher, bucket_s: int
    ):
        self._rules = rules
        self._store = store
        self._publisher = publisher
        self._bucket_s = bucket_s

    async def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        for rule in await self._rules.list():
            try:
                await self._one(rule, now)
            except Exception as exc:  # one broken rule must not stop the others
                log.warning("alert_rule_failed", rule=rule["_id"], error=str(exc))

    async def _one(self, rule: Document, now: datetime) -> None:
        epoch = now.timestamp()
        oldest, end = window_of(rule, epoch, self._bucket_s)
        docs = await self._store.minutes(
            rule["endpoint"],
            rule["deployment"] or None,
            datetime.fromtimestamp(oldest, UTC),
            datetime.fromtimestamp(end, UTC),
        )
        value = evaluate(docs, rule, epoch, self._bucket_s)
        breached = value is not None and OPERATORS[rule["operator"]](value, rule["threshold"])
        state, since = rule["state"], rule.get("state_since")
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        if breached and state == "ok":
            state, since = "pending", now
        held = since is not None and (now - since).total_seconds() >= rule["for_s"]
        if breached and state == "pending" and held:
            state, since = "firing", now
            await self._publish("fired", rule, value)
        if not breached and state == "firing":
            await self._publish("resolved", rule, value)
            state, since = "ok", now
        elif not breached and state == "pending":
            state, since = "ok", now
        await self._rules.set_state(rule["_id"], state, since, value)

    async def _publish(self, verb: str, rule: Document, value: float | None) -> None:
        data = AlertChanged(
            rule=rule["_id"],
            metric=rule["metric"],
            endpoint=rule["endpoint"],
            deployment=rule["deployment"] or None,
            aggregation=rule["aggregation"],
            operator=rule["operator"],
            threshold=rule["threshold"],
            window_s=rule["window_s"],
            for_s=rule["for_s"],
            value=value,
        )
        spec = ALERT_FIRED if verb == "fired" else ALERT_RESOLVED
        await self._publisher.publish(spec, data, subject=rule["_id"], actor=ACTOR)
        log.info(f"alert_{verb}", **data.model_dump())
