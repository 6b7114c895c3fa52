"""Costs answered as Azure Cost Management's query: columns and rows, Daily, grouping by
ResourceId, a ResourceId filter, and refusals naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import json_format

from sluice.common.azure_ids import WORKSPACE_ID
from sluice.metrics import cost_query as cq
from sluice.v1 import metrics_pb2

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
WS = WORKSPACE_ID


def _definition(body: dict[str, object]) -> metrics_pb2.CostQueryDefinition:
    return json_format.ParseDict(body, metrics_pb2.CostQueryDefinition())


def _report(*lines: tuple[str, str, str, float, float]) -> metrics_pb2.CostReport:
    return metrics_pb2.CostReport(
        lines=[
            metrics_pb2.CostLine(
                endpoint_name=e, deployment_name=d, kind=k, cost=c, instance_hours=h
            )
            for e, d, k, c, h in lines
        ]
    )


def test_daily_costs_by_resource_in_azures_shape() -> None:
    plan = cq.parse(
        _definition(
            {
                "type": "ActualCost",
                "timeframe": "Custom",
                "timePeriod": {"from": "2026-11-24T12:00:00Z", "to": "2026-11-26T00:00:00Z"},
                "dataset": {
                    "granularity": "Daily",
                    "aggregation": {
                        "totalCost": {"name": "Cost", "function": "Sum"},
                        "hours": {"name": "UsageQuantity", "function": "Sum"},
                    },
                    "grouping": [{"type": "Dimension", "name": "ResourceId"}],
                    "filter": {
                        "dimensions": {
                            "name": "ResourceId",
                            "operator": "In",
                            "values": [f"{WS}/onlineEndpoints/ep"],
                        }
                    },
                },
            }
        ),
        NOW,
    )
    assert [(s.day, e.day) for s, e in cq.windows(plan)] == [(24, 25), (25, 26)]
    assert cq.windows(plan)[0][0].hour == 12  # the first day starts at timePeriod.from
    reports = [
        (start, _report(("ep", "blue", "online", 1.5, 3.0), ("other", "x", "online", 9.0, 9.0)))
        for start, _ in cq.windows(plan)
    ]
    out = json_format.MessageToDict(cq.result(plan, reports, "USD"))
    assert out["type"] == "Microsoft.CostManagement/query"
    columns = [c["name"] for c in out["properties"]["columns"]]
    assert columns == ["UsageQuantity", "Cost", "ResourceId", "UsageDate", "Currency"]
    blue = f"{WS}/onlineEndpoints/ep/deployments/blue"
    assert out["properties"]["rows"] == [
        [3.0, 1.5, blue, 20261124, "USD"],
        [3.0, 1.5, blue, 20261125, "USD"],
    ]


def test_month_to_date_total_by_default() -> None:
    plan = cq.parse(_definition({"type": "Usage", "timeframe": "MonthToDate"}), NOW)
    assert plan.start == datetime(2026, 11, 1, tzinfo=UTC) and plan.end == NOW
    report = _report(("ep", "blue", "online", 1.0, 2.0), ("b", "score", "batch", 0.5, 1.0))
    out = cq.result(plan, [(plan.start, report)], "USD")
    assert [c.name for c in out.properties.columns] == ["Cost", "Currency"]
    assert [list(r) for r in out.properties.rows] == [[1.5, "USD"]]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"timeframe": "Custom"}, "timePeriod.from and timePeriod.to"),
        ({"timeframe": "Yesterday"}, "timeframe 'Yesterday'"),
        ({"timeframe": "MonthToDate", "type": "Forecast"}, "type 'Forecast'"),
        ({"timeframe": "MonthToDate", "dataset": {"granularity": "Monthly"}}, "granularity"),
        (
            {
                "timeframe": "MonthToDate",
                "dataset": {"aggregation": {"t": {"name": "Cost", "function": "Avg"}}},
            },
            "dataset.aggregation.t.function",
        ),
        (
            {
                "timeframe": "MonthToDate",
                "dataset": {"grouping": [{"type": "TagKey", "name": "team"}]},
            },
            "dataset.grouping[0]",
        ),
        (
            {
                "timeframe": "MonthToDate",
                "dataset": {
                    "filter": {
                        "dimensions": {"name": "ResourceId", "operator": "In", "values": ["/x/y"]}
                    }
                },
            },
            "dataset.filter.dimensions.values",
        ),
    ],
)
def test_bad_queries_name_the_field(body: dict[str, object], says: str) -> None:
    with pytest.raises(cq.BadCostQuery) as caught:
        cq.parse(_definition(body), NOW)
    assert says in str(caught.value)
