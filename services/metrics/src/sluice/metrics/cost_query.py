"""Azure Cost Management's query over the platform's costs (the same lines as GetCosts).

`POST /providers/Microsoft.CostManagement/query` with Azure's QueryDefinition
(`{type, timeframe, timePeriod: {from, to}, dataset: {granularity, aggregation,
grouping, filter}}`) answers `{id, name, type, properties: {columns: [{name, type}],
rows: [[...]]}}`: one column per aggregation (`Cost`, or `UsageQuantity` for instance
hours), then `ResourceId` when grouped by it, `UsageDate` (20261126) when Daily, and
`Currency`. What Azure's API has and Sluice does not (other dimensions, tag grouping,
forecasts) is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from sluice.common.azure_ids import resource_id
from sluice.v1 import metrics_pb2

COSTS = {"cost", "pretaxcost", "costusd"}
QUANTITY = "usagequantity"
MAX_DAYS = 92
TYPES = {"actualcost", "amortizedcost", "usage"}


class BadCostQuery(ValueError):
    """A query the API does not answer; the message names the field."""


@dataclass(frozen=True)
class Plan:
    start: datetime
    end: datetime
    daily: bool
    columns: list[tuple[str, bool]]  # (column name, is the cost: else instance hours)
    by_resource: bool
    scopes: list[tuple[str, str, str]]  # (collection, endpoint, deployment); [] = all


def _instant(text: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadCostQuery(f"{field} {text!r} is not an ISO 8601 date or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _period(definition: Any, now: datetime) -> tuple[datetime, datetime]:
    frame = definition.timeframe.lower()
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if frame == "custom":
        period = definition.time_period
        if not period.from_ or not period.to:
            raise BadCostQuery("timePeriod.from and timePeriod.to are required with Custom")
        start, end = _instant(period.from_, "timePeriod.from"), _instant(period.to, "timePeriod.to")
        if start >= end:
            raise BadCostQuery("timePeriod.from must be before timePeriod.to")
        return start, end
    if definition.HasField("time_period"):
        raise BadCostQuery("timePeriod goes with timeframe Custom only")
    if frame in ("monthtodate", "billingmonthtodate"):
        return month, now
    if frame == "weektodate":
        return (now - timedelta(days=now.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0
        ), now
    if frame == "thelastmonth":
        return (month - timedelta(days=1)).replace(day=1), month
    raise BadCostQuery(
        f"timeframe {definition.timeframe!r} is not Custom, MonthToDate, WeekToDate or TheLastMonth"
    )


def _scope(uri: str) -> tuple[str, str, str]:
    parts = uri.strip("/").split("/")
    for collection in ("onlineEndpoints", "batchEndpoints"):
        if collection in parts:
            rest = parts[parts.index(collection) + 1 :]
            if len(rest) == 1:
                return collection, rest[0], ""
            if len(rest) == 3 and rest[1] == "deployments":
                return collection, rest[0], rest[2]
    raise BadCostQuery(
        f"dataset.filter.dimensions.values: {uri!r} is not an endpoint's or deployment's id"
    )


def parse(definition: Any, now: datetime) -> Plan:
    if definition.type and definition.type.lower() not in TYPES:
        raise BadCostQuery(f"type {definition.type!r} is not ActualCost, AmortizedCost or Usage")
    start, end = _period(definition, now)
    dataset = definition.dataset
    granularity = (dataset.granularity or "None").lower()
    if granularity not in ("none", "daily"):
        raise BadCostQuery(f"dataset.granularity {dataset.granularity!r} is not None or Daily")
    if granularity == "daily" and (end - start) > timedelta(days=MAX_DAYS):
        raise BadCostQuery(f"a Daily query spans at most {MAX_DAYS} days")
    columns = []
    for alias, aggregation in sorted(dataset.aggregation.items()):
        where = f"dataset.aggregation.{alias}"
        if aggregation.function.lower() != "sum":
            raise BadCostQuery(f"{where}.function {aggregation.function!r}: only Sum")
        if aggregation.name.lower() not in (*COSTS, QUANTITY):
            raise BadCostQuery(
                f"{where}.name {aggregation.name!r} is not Cost, PreTaxCost, CostUSD or "
                "UsageQuantity"
            )
        columns.append((aggregation.name, aggregation.name.lower() != QUANTITY))
    by_resource = False
    for i, group in enumerate(dataset.grouping):
        if group.type.lower() != "dimension" or group.name.lower() != "resourceid":
            raise BadCostQuery(
                f"dataset.grouping[{i}]: only the ResourceId dimension, got {group.type} "
                f"{group.name!r}"
            )
        by_resource = True
    scopes = []
    if dataset.HasField("filter"):
        found = dataset.filter.dimensions
        if found.name.lower() != "resourceid" or found.operator.lower() != "in":
            raise BadCostQuery(
                "dataset.filter: only {dimensions: {name: ResourceId, operator: In}}"
            )
        scopes = [_scope(v) for v in found.values]
    return Plan(
        start=start,
        end=end,
        daily=granularity == "daily",
        columns=columns or [("Cost", True)],
        by_resource=by_resource,
        scopes=scopes,
    )


def windows(plan: Plan) -> list[tuple[datetime, datetime]]:
    """One window, or one per UTC day of the period (Daily)."""
    if not plan.daily:
        return [(plan.start, plan.end)]
    out = []
    day = plan.start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day < plan.end:
        out.append((max(day, plan.start), min(day + timedelta(days=1), plan.end)))
        day += timedelta(days=1)
    return out


def _line_scope(line: Any) -> tuple[str, str, str]:
    collection = "batchEndpoints" if line.kind == "batch" else "onlineEndpoints"
    return collection, line.endpoint_name, line.deployment_name


def _wanted(plan: Plan, scope: tuple[str, str, str]) -> bool:
    return not plan.scopes or any(
        (c, e) == scope[:2] and d in ("", scope[2]) for c, e, d in plan.scopes
    )


def result(
    plan: Plan, reports: list[tuple[datetime, Any]], currency: str
) -> metrics_pb2.CostQueryResult:
    """Rows from the CostReport of each window (`reports`: (window start, report))."""
    names = [metrics_pb2.CostQueryColumn(name=n, type="Number") for n, _ in plan.columns]
    if plan.by_resource:
        names.append(metrics_pb2.CostQueryColumn(name="ResourceId", type="String"))
    if plan.daily:
        names.append(metrics_pb2.CostQueryColumn(name="UsageDate", type="Number"))
    names.append(metrics_pb2.CostQueryColumn(name="Currency", type="String"))
    rows = []
    for day, report in reports:
        sums: dict[str, list[float]] = {}
        for line in report.lines:
            scope = _line_scope(line)
            if not _wanted(plan, scope):
                continue
            key = (
                resource_id(scope[0], scope[1], "deployments", scope[2]) if plan.by_resource else ""
            )
            total = sums.setdefault(key, [0.0, 0.0])
            total[0] += line.cost
            total[1] += line.instance_hours
        if not sums and not plan.by_resource:
            sums[""] = [0.0, 0.0]
        for key, (cost, hours) in sorted(sums.items()):
            row: list[Any] = [cost if is_cost else hours for _, is_cost in plan.columns]
            if plan.by_resource:
                row.append(key)
            if plan.daily:
                row.append(int(day.strftime("%Y%m%d")))
            row.append(currency)
            values = struct_pb2.ListValue()
            values.extend(row)
            rows.append(values)
    return metrics_pb2.CostQueryResult(
        id=resource_id("providers", "Microsoft.CostManagement", "query"),
        name="query",
        type="Microsoft.CostManagement/query",
        properties=metrics_pb2.CostQueryProperties(columns=names, rows=rows),
    )
