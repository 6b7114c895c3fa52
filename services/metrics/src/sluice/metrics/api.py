"""gRPC face of the aggregator: metrics over a window at a step, costs, alert rules."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import timestamp_pb2
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from sluice.common.mongo import Document
from sluice.common.resources import (
    ONLINE_DEPLOYMENTS,
    ONLINE_ENDPOINTS,
    ComputeKind,
    deployment_id,
)
from sluice.metrics import alerts, azure_monitor, cost_query, costs, query, sketch
from sluice.metrics.cache import PointCache
from sluice.metrics.store import MetricsStore
from sluice.v1 import metrics_pb2, metrics_pb2_grpc

MAX_POINTS = 50_000
# A bucket is cached once it ended this long ago (Envoy's 1 s log buffer + our 1 s flush).
CLOSE_DELAY_S = 10  # per series: 34 days at one minute


class InvalidArgument(ValueError):
    pass


class NotFound(LookupError):
    pass


class AlreadyExists(ValueError):
    pass


def window_of(request_window: Any, *, default_s: float = 3600) -> tuple[datetime, datetime]:
    """(start, end) of a TimeWindow; end defaults to now, start to end - `default_s`."""
    now = datetime.now(UTC)
    end = request_window.end.ToDatetime(UTC) if request_window.HasField("end") else now
    if request_window.HasField("start"):
        start = request_window.start.ToDatetime(UTC)
    else:
        start = datetime.fromtimestamp(end.timestamp() - default_s, UTC)
    if start >= end:
        raise InvalidArgument(
            f"window start {start.isoformat()} is not before its end {end.isoformat()}"
        )
    return start, end


def _timestamp(epoch: int) -> Any:
    ts = timestamp_pb2.Timestamp()
    ts.FromSeconds(epoch)
    return ts


def point_of(deployment: str, step: query.Step, step_s: int) -> Any:
    p50, p90, p95, p99 = step.quantiles()
    values = step.values(step_s)
    return metrics_pb2.MetricPoint(
        time=_timestamp(step.start),
        deployment_name=deployment,
        requests=step.requests,
        mirrored_requests=step.mirrored,
        requests_per_minute=step.requests / (step_s / 60),
        latency_avg_ms=values["RequestLatency"] or 0.0,
        latency_p50_ms=p50 or 0.0,
        latency_p90_ms=p90 or 0.0,
        latency_p95_ms=p95 or 0.0,
        latency_p99_ms=p99 or 0.0,
        responses_by_status_class=step.status_class,
        responses_by_status_code=step.status_code,
        failures=step.failures,
        bytes_in=step.bytes_in,
        bytes_out=step.bytes_out,
        instance_count=step.instance_count,
        active_connections=round(values["ConnectionsActive"] or 0.0),
        cpu_utilization_percent=values["CpuUtilizationPercentage"] or 0.0,
        memory_utilization_percent=values["CpuMemoryUtilizationPercentage"] or 0.0,
    )


class MetricsQueries:
    """The use cases behind the API (and the CLI through it)."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        store: MetricsStore,
        currency: str,
        bucket_s: int,
        cache: PointCache | None = None,
    ):
        self._cache = cache or PointCache()
        self._db = db
        self._store = store
        self._currency = currency
        self._bucket_s = bucket_s

    async def cost_report(self, request: Any) -> Any:
        start, end = window_of(request.window, default_s=86400)
        if request.deployment_name and not request.endpoint_name:
            raise InvalidArgument("deployment_name needs endpoint_name")
        if request.endpoint_name:
            await self.check_scope(request.endpoint_name, request.deployment_name, for_costs=True)
        records = await costs.history(
            self._db, start, end, request.endpoint_name or None, request.deployment_name or None
        )
        lines = costs.cost_lines(records, start, end, datetime.now(UTC))
        report = metrics_pb2.CostReport(
            currency=self._currency,
            lines=[
                metrics_pb2.CostLine(
                    endpoint_name=line.endpoint,
                    deployment_name=line.deployment,
                    instance_type=line.instance_type,
                    instance_hours=line.instance_hours,
                    hourly_price=line.hourly_price,
                    cost=line.cost,
                    kind=line.kind,
                    running_instances=line.running,
                )
                for line in lines
            ],
            total=sum(line.cost for line in lines),
            no_usage_deployments=[
                f"{endpoint}/{deployment}"
                for endpoint, deployment in await self.unmeasured(
                    request.endpoint_name, request.deployment_name
                )
            ],
        )
        report.window.start.FromDatetime(start)
        report.window.end.FromDatetime(end)
        return report

    async def cost_query(self, definition: Any) -> Any:
        """Azure Cost Management's answer (sluice.metrics.cost_query) over cost_report."""
        plan = cost_query.parse(definition, datetime.now(UTC))
        reports = []
        for start, end in cost_query.windows(plan):
            request = metrics_pb2.GetCostsRequest()
            request.window.start.FromDatetime(start)
            request.window.end.FromDatetime(end)
            reports.append((start, await self.cost_report(request)))
        return cost_query.result(plan, reports, self._currency)

    async def unmeasured(self, endpoint: str, deployment: str) -> list[tuple[str, str]]:
        """(endpoint, deployment) of the asked deployments (all of them for empty names) on
        the kubernetes compute: nothing records their instances (instance-hours) or usage
        samples (CPU, memory, instance count), only their requests (docs/metrics.md)."""
        query_: dict[str, Any] = {"spec.kind": ComputeKind.kubernetes.value}
        if endpoint:
            query_["spec.endpoint_name"] = endpoint
        if deployment:
            query_["spec.name"] = deployment
        found = self._db[ONLINE_DEPLOYMENTS].find(query_, {"spec.endpoint_name": 1, "spec.name": 1})
        return sorted([(d["spec"]["endpoint_name"], d["spec"]["name"]) async for d in found])

    async def check_scope(
        self, endpoint: str, deployment: str, *, for_costs: bool = False, metrics: bool = True
    ) -> None:
        """An endpoint (deployment) that exists, or existed long enough to have metrics."""
        if not endpoint:
            raise InvalidArgument("endpoint_name is required")
        if deployment:
            known = await self._db[ONLINE_DEPLOYMENTS].find_one(
                {"_id": deployment_id(endpoint, deployment)}, {"_id": 1}
            )
        else:
            known = await self._db[ONLINE_ENDPOINTS].find_one({"_id": endpoint}, {"_id": 1})
        if known is not None:
            return
        if for_costs:
            where = {"endpoint": endpoint, **({"deployment": deployment} if deployment else {})}
            if await self._db[costs.INSTANCE_HISTORY].find_one(where, {"_id": 1}):
                return

        elif metrics and await self._store.has_endpoint(endpoint, deployment or None):
            return
        what = f"deployment {deployment!r} of endpoint" if deployment else "endpoint"
        if not (for_costs or metrics):
            raise NotFound(f"{what} {endpoint!r} does not exist")
        recorded = "costs" if for_costs else "metrics"
        raise NotFound(f"{what} {endpoint!r} does not exist and has no recorded {recorded}")

    @staticmethod
    def _points(docs: list[Document], step_s: int, deployment: str) -> list[Any]:
        """Points by deployment, then time (with the endpoint's total unless one deployment)."""
        series = query.steps(docs, step_s=step_s)
        if deployment:
            series.pop(query.ENDPOINT_TOTAL, None)
        return [
            point_of(dep, step, step_s)
            for dep in sorted(series)
            for _, step in sorted(series[dep].items())
        ]

    async def _bucket_points(
        self, endpoint: str, deployment: str, start: datetime, end: datetime
    ) -> list[Any]:
        """One point per bucket, closed buckets from the cache (sluice.metrics.cache)."""
        width = self._bucket_s
        scope = deployment or "*"
        first = -(-math.ceil(start.timestamp()) // width) * width
        last = math.ceil(end.timestamp())
        closed_before = time.time() - width - CLOSE_DELAY_S
        by_bucket: dict[int, list[Any]] = {}
        missing = []
        for bucket in range(first, last, width):
            cached = self._cache.get((endpoint, bucket), scope)
            if cached is None:
                missing.append(bucket)
            else:
                by_bucket[bucket] = cached
        if missing:
            versions = {b: self._cache.version((endpoint, b)) for b in missing}
            docs = await self._store.minutes(
                endpoint,
                deployment or None,
                datetime.fromtimestamp(missing[0], UTC),
                datetime.fromtimestamp(missing[-1] + width, UTC),
            )
            grouped: dict[int, list[Document]] = {}
            for doc in docs:
                grouped.setdefault(int(doc["minute"].timestamp()), []).append(doc)
            deployments = {str(d["deployment"]) for d in docs} if not deployment else set()
            for bucket in missing:
                points = self._points(grouped.get(bucket, []), width, deployment)
                by_bucket[bucket] = points
                if bucket < closed_before:
                    self._cache.put((endpoint, bucket), scope, points, versions[bucket])
                    # The endpoint's points hold each deployment's too: one read fills both.
                    for dep in deployments:
                        mine = [p for p in points if p.deployment_name == dep]
                        self._cache.put((endpoint, bucket), dep, mine, versions[bucket])
        ordered = [p for bucket in sorted(by_bucket) for p in by_bucket[bucket]]
        ordered.sort(key=lambda p: p.deployment_name)  # stable: time order within each
        return ordered

    async def warm(self, hours: float = 24.0) -> int:
        """Fill the point cache with the closed buckets of the last `hours` of every endpoint
        (and each of its deployments), so the first dashboard query after a restart answers
        like the next ones instead of reading and sketching every minute (4.6 s for 24 h of
        one deployment on SecantusDB). Returns the number of endpoints warmed."""
        end = datetime.now(UTC)
        start = end - timedelta(hours=hours)
        endpoints = await self._store.endpoints_since(start)
        for endpoint in endpoints:
            await self._bucket_points(endpoint, "", start, end)
        return len(endpoints)

    async def endpoint_metrics(self, request: Any) -> Any:
        step_s = request.step_s or self._bucket_s
        if step_s < self._bucket_s or step_s % self._bucket_s:
            raise InvalidArgument(
                f"step_s must be a positive multiple of {self._bucket_s}, got {step_s}"
            )
        start, end = window_of(request.window)
        if (end - start).total_seconds() / step_s > MAX_POINTS:
            raise InvalidArgument(
                f"window/step gives more than {MAX_POINTS} points: use a larger step"
            )
        endpoint, deployment = request.endpoint_name, request.deployment_name
        await self.check_scope(endpoint, deployment)
        if step_s == self._bucket_s:
            points = await self._bucket_points(endpoint, deployment, start, end)
        else:
            docs = await self._store.minutes(endpoint, deployment or None, start, end)
            points = self._points(docs, step_s, deployment)
        return metrics_pb2.EndpointMetrics(
            endpoint_name=request.endpoint_name,
            points=points,
            step_s=step_s,
            latency_relative_accuracy=sketch.RELATIVE_ACCURACY,
            no_usage_deployments=[d for _, d in await self.unmeasured(endpoint, deployment)],
        )

    async def azure_metrics(self, request: Any) -> Any:
        """Azure Monitor's answer (sluice.metrics.azure_monitor) over the same points."""
        wanted = azure_monitor.parse(request, self._bucket_s, datetime.now(UTC))
        found = await self.endpoint_metrics(azure_monitor.points_request(request, wanted))
        return azure_monitor.answer(request, wanted, list(found.points))


ERRORS = (InvalidArgument, NotFound, AlreadyExists, azure_monitor.BadQuery, cost_query.BadCostQuery)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    if isinstance(exc, NotFound):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(exc, AlreadyExists):
        code = grpc.StatusCode.ALREADY_EXISTS
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    await context.abort(code, str(exc))
    raise AssertionError("unreachable: abort raises")


def rule_of(request: Any) -> dict[str, Any]:
    return {
        "name": request.name,
        "metric": request.metric,
        "endpoint": request.endpoint_name,
        "deployment": request.deployment_name,
        "aggregation": request.aggregation or "avg",
        "operator": request.operator,
        "threshold": request.threshold,
        "window_s": request.window_s,
        "for_s": request.for_s,
        "description": request.description,
    }


def rule_message(doc: Document) -> Any:
    message = metrics_pb2.AlertRule(
        name=doc["_id"],
        metric=doc["metric"],
        endpoint_name=doc["endpoint"],
        deployment_name=doc["deployment"],
        aggregation=doc["aggregation"],
        operator=doc["operator"],
        threshold=doc["threshold"],
        window_s=doc["window_s"],
        for_s=doc["for_s"],
        description=doc.get("description", ""),
        state=doc.get("state") or "ok",
        last_value=doc.get("last_value") or 0.0,
    )
    if doc.get("state_since") is not None:
        message.state_since.FromDatetime(doc["state_since"])
    return message


class AlertAdmin:
    """Create, list and delete alert rules, with the checks that make bad rules fail early."""

    def __init__(self, rules: alerts.AlertRules, queries: MetricsQueries, bucket_s: int):
        self._rules = rules
        self._queries = queries
        self._bucket_s = bucket_s

    async def create(self, request: Any) -> Any:
        rule = rule_of(request)
        try:
            alerts.validate(rule, self._bucket_s)
        except alerts.RuleError as exc:
            raise InvalidArgument(str(exc)) from exc
        await self._queries.check_scope(rule["endpoint"], rule["deployment"], metrics=False)
        try:
            doc = await self._rules.create(rule)
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"alert rule {rule['name']!r} already exists") from exc
        return rule_message(doc)

    async def list(self, request: Any) -> Any:
        docs = await self._rules.list(request.endpoint_name or None)
        return metrics_pb2.ListAlertRulesResponse(rules=[rule_message(d) for d in docs])

    async def delete(self, request: Any) -> Any:
        if not await self._rules.delete(request.name):
            raise NotFound(f"alert rule {request.name!r} does not exist")
        return metrics_pb2.DeleteAlertRuleResponse()


class MetricsApi(metrics_pb2_grpc.MetricsServicer):
    def __init__(self, queries: MetricsQueries, admin: AlertAdmin):
        self._queries = queries
        self._admin = admin

    async def GetEndpointMetrics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._queries.endpoint_metrics(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def ListEndpointAzureMetrics(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            return await self._queries.azure_metrics(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def ListDeploymentAzureMetrics(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            return await self._queries.azure_metrics(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def GetCosts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._queries.cost_report(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def QueryCosts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._queries.cost_query(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def CreateAlertRule(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._admin.create(request)
        except ERRORS as exc:
            await _abort(context, exc)

    async def ListAlertRules(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._admin.list(request)

    async def DeleteAlertRule(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await self._admin.delete(request)
        except ERRORS as exc:
            await _abort(context, exc)
