"""Azure Monitor's metrics API over the same minutes as GetEndpointMetrics.

`GET .../onlineEndpoints/{e}[/deployments/{d}]/providers/Microsoft.Insights/metrics
?metricnames=RequestsPerMinute,RequestLatency_P99&timespan=<start>/<end>&interval=PT1M`
answers `{timespan, interval, namespace, value: [{id, name: {value, localizedValue},
unit, timeseries: [{metadatavalues, data: [{timeStamp, average}]}]}]}` as Azure does.
Metric names and their scopes are Azure's (docs/metrics.md): a deployment metric asked
of an endpoint, or the reverse, is refused naming the right path, as Azure refuses a
metric the resource does not have. Each interval has one value (the step's), so the
aggregations are `Average` and, for RequestsPerMinute, `Total` (the requests counted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2

from sluice.common.azure_ids import resource_id
from sluice.v1 import common_pb2, metrics_pb2

ENDPOINT, DEPLOYMENT = "endpoint", "deployment"
BOTH = frozenset({ENDPOINT, DEPLOYMENT})
NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_FILTER = re.compile(
    r"^\s*(deployment|statusCodeClass|statusCode)\s+eq\s+'([^']+)'\s*$", re.IGNORECASE
)
# RequestsPerMinute's status dimensions -> the MetricPoint map that counts them.
STATUS_DIMENSIONS = {
    "statusCodeClass": "responses_by_status_class",
    "statusCode": "responses_by_status_code",
}
Point = Any  # metrics_pb2.MetricPoint


class BadQuery(ValueError):
    """A query Azure's metrics API would refuse; the message names the parameter."""


@dataclass(frozen=True)
class Metric:
    unit: str
    description: str
    scopes: frozenset[str]
    average: Callable[[Point, int], float]
    total: Callable[[Point, int], float] | None = None


def _field(name: str) -> Callable[[Point, int], float]:
    return lambda point, step_s: float(getattr(point, name))


CATALOGUE: dict[str, Metric] = {
    "RequestsPerMinute": Metric(
        "Count",
        "Requests per minute (the endpoint's exclude mirrored copies)",
        BOTH,
        lambda p, s: p.requests_per_minute,
        total=lambda p, s: float(p.requests),
    ),
    "RequestLatency": Metric(
        "MilliSeconds", "Mean request latency", frozenset({ENDPOINT}), lambda p, s: p.latency_avg_ms
    ),
    **{
        f"RequestLatency_P{q}": Metric(
            "MilliSeconds",
            f"Request latency, {q}th percentile (DDSketch, ±1%)",
            BOTH,
            _field(f"latency_p{q}_ms"),
        )
        for q in (50, 90, 95, 99)
    },
    "ConnectionsActive": Metric(
        "Count",
        "The gateway's open connections to the instances",
        BOTH,
        lambda p, s: float(p.active_connections),
    ),
    "NetworkBytes": Metric(
        "BytesPerSecond",
        "Request and response bytes per second",
        frozenset({ENDPOINT}),
        lambda p, s: (p.bytes_in + p.bytes_out) / s,
    ),
    "CpuUtilizationPercentage": Metric(
        "Percent",
        "CPU use of the instances (100 = one core)",
        frozenset({DEPLOYMENT}),
        lambda p, s: p.cpu_utilization_percent,
    ),
    "CpuMemoryUtilizationPercentage": Metric(
        "Percent",
        "Resident memory of the instances / the instance type's memory",
        frozenset({DEPLOYMENT}),
        lambda p, s: p.memory_utilization_percent,
    ),
    "DeploymentCapacity": Metric(
        "Count",
        "Instances that ran in the interval",
        frozenset({DEPLOYMENT}),
        lambda p, s: float(p.instance_count),
    ),
}


def parse_duration(text: str, field: str) -> timedelta:
    match = _DURATION.match(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT"):
        raise BadQuery(f"{field} {text!r} is not an ISO 8601 duration (e.g. PT1M, PT1H)")
    days, hours, minutes, seconds = match.groups()
    return timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(seconds or 0),
    )


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadQuery(
            f"timespan: {text!r} is not an ISO 8601 date-time (e.g. 2026-11-26T09:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_timespan(text: str, now: datetime) -> tuple[datetime, datetime]:
    """`<start>/<end>`, `<start>/<duration>` or `<duration>` (ending now); "" = PT1H."""
    if not text:
        return now - timedelta(hours=1), now
    first, sep, second = text.partition("/")
    if not sep:
        return now - parse_duration(first, "timespan"), now
    start = _instant(first)
    end = start + parse_duration(second, "timespan") if second.upper().startswith("P") else None
    end = end or _instant(second)
    if start >= end:
        raise BadQuery(f"timespan {text!r}: the start is not before the end")
    return start, end


@dataclass(frozen=True)
class Query:
    names: list[str]
    start: datetime
    end: datetime
    step_s: int
    aggregations: list[str]
    dimension: str  # "": one series; deployment, statusCodeClass or statusCode: split
    split: str  # the dimension's value to show; "*": one series per value


def parse(request: Any, bucket_s: int, now: datetime) -> Query:
    scope = DEPLOYMENT if request.deployment_name else ENDPOINT
    names = [n.strip() for n in (request.metricnames or "RequestsPerMinute").split(",")]
    for name in names:
        metric = CATALOGUE.get(name)
        if metric is None:
            raise BadQuery(
                f"metricnames: {name!r} is not a metric of online endpoints here "
                f"(known: {', '.join(CATALOGUE)})"
            )
        if scope not in metric.scopes:
            where = (
                "/onlineEndpoints/{endpoint}/deployments/{deployment}/providers/"
                "Microsoft.Insights/metrics"
                if scope == ENDPOINT
                else "/onlineEndpoints/{endpoint}/providers/Microsoft.Insights/metrics"
            )
            other = "a deployment" if scope == ENDPOINT else "an endpoint"
            raise BadQuery(f"metricnames: {name} is {other} metric in Azure; ask {where}")
    step = parse_duration(request.interval or "PT1M", "interval").total_seconds()
    if step < bucket_s or step % bucket_s:
        raise BadQuery(
            f"interval {request.interval!r} must be a whole number of minutes (PT1M, PT5M, PT1H)"
        )
    aggregations = [a.strip().lower() for a in (request.aggregation or "average").split(",")]
    for aggregation in aggregations:
        if aggregation not in ("average", "total"):
            raise BadQuery(
                f"aggregation {aggregation!r}: Sluice keeps one value per interval, so only "
                "Average (and Total, for RequestsPerMinute) are answered"
            )
        if aggregation == "total" and any(CATALOGUE[n].total is None for n in names):
            raise BadQuery("aggregation Total is answered for RequestsPerMinute only")
    dimension, split = "", ""
    if request.filter:
        match = _FILTER.match(request.filter)
        if match is None:
            raise BadQuery(
                f"$filter {request.filter!r}: only \"<dimension> eq '<value>'\" ('*': one "
                "series per value) with dimension deployment, statusCodeClass or statusCode"
            )
        dimension = next(
            d for d in ("deployment", *STATUS_DIMENSIONS) if d.lower() == match[1].lower()
        )
        split = match[2]
        if dimension == "deployment" and scope == DEPLOYMENT:
            raise BadQuery("$filter on deployment: ask the endpoint's metrics, not a deployment's")
        if dimension in STATUS_DIMENSIONS and names != ["RequestsPerMinute"] * len(names):
            raise BadQuery(f"$filter on {dimension}: only RequestsPerMinute has that dimension")
    start, end = parse_timespan(request.timespan, now)
    return Query(names, start, end, int(step), aggregations, dimension, split)


def points_request(request: Any, query: Query) -> Any:
    window = common_pb2.TimeWindow()
    window.start.FromDatetime(query.start)
    window.end.FromDatetime(query.end)
    return metrics_pb2.GetEndpointMetricsRequest(
        endpoint_name=request.endpoint_name,
        deployment_name=request.deployment_name,
        window=window,
        step_s=query.step_s,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _interval(step_s: int) -> str:
    minutes = step_s // 60
    return f"PT{minutes // 60}H" if minutes % 60 == 0 else f"PT{minutes}M"


def answer(request: Any, query: Query, points: list[Point]) -> Any:
    """The Azure Monitor response for `points` (GetEndpointMetrics' points of the scope)."""
    by_series: dict[str, dict[int, Point]] = {}
    for point in points:
        by_series.setdefault(point.deployment_name, {})[point.time.seconds] = point
    base = by_series.get(request.deployment_name, {})  # "" is the endpoint's total
    series: list[tuple[str, dict[int, Point]]] = [("", base)]
    if query.dimension == "deployment":
        series = [
            (dep, found)
            for dep, found in sorted(by_series.items())
            if dep and query.split in ("*", dep)
        ]
    elif query.dimension:
        counts = STATUS_DIMENSIONS[query.dimension]
        seen = sorted({key for p in base.values() for key in getattr(p, counts)})
        series = [(label, base) for label in seen if query.split in ("*", label)]
    step = query.step_s
    first = int(query.start.timestamp()) // step * step
    grid = list(range(first, int(query.end.timestamp()), step))
    scope = ["onlineEndpoints", request.endpoint_name]
    if request.deployment_name:
        scope += ["deployments", request.deployment_name]
    out = metrics_pb2.AzureMetricsResponse(
        timespan=f"{_iso(query.start)}/{_iso(query.end)}",
        interval=_interval(step),
        namespace=NAMESPACE + ("/deployments" if request.deployment_name else ""),
        resourceregion="local",
    )
    for name in query.names:
        metric = CATALOGUE[name]
        found = out.value.add(
            id=f"{resource_id(*scope)}/providers/Microsoft.Insights/metrics/{name}",
            type="Microsoft.Insights/metrics",
            name=metrics_pb2.AzureLocalizableString(value=name, localized_value=name),
            display_description=metric.description,
            unit=metric.unit,
            error_code="Success",
        )
        for label, at in series:
            line = found.timeseries.add()
            if label:
                line.metadatavalues.add(
                    name=metrics_pb2.AzureLocalizableString(
                        value=query.dimension, localized_value=query.dimension
                    ),
                    value=label,
                )
            for second in sorted(set(grid) | set(at)):
                value = line.data.add(time_stamp=timestamp_pb2.Timestamp(seconds=second))
                point = at.get(second)
                if point is None:
                    continue
                total: float | None
                if query.dimension in STATUS_DIMENSIONS:  # the requests with that status
                    counts = getattr(point, STATUS_DIMENSIONS[query.dimension])
                    requests = float(counts.get(label, 0))
                    average, total = requests / (step / 60), requests
                else:
                    average = metric.average(point, step)
                    total = metric.total(point, step) if metric.total else None
                if "average" in query.aggregations:
                    value.average = average
                if "total" in query.aggregations and total is not None:
                    value.total = total
    return out
