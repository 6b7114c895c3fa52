"""GetEndpointMetrics' points answered in Azure Monitor's shape: names, scopes, intervals
and aggregations as Azure's metrics API takes them, refusals naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import json_format, timestamp_pb2

from sluice.metrics import azure_monitor as am
from sluice.v1 import metrics_pb2

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
T0 = int(NOW.timestamp()) - 180


def _point(deployment: str, minute: int, requests: int) -> metrics_pb2.MetricPoint:
    return metrics_pb2.MetricPoint(
        time=timestamp_pb2.Timestamp(seconds=T0 + 60 * minute),
        deployment_name=deployment,
        requests=requests,
        requests_per_minute=float(requests),
        latency_p99_ms=12.5,
        cpu_utilization_percent=40.0,
    )


def _request(**fields: str) -> metrics_pb2.ListAzureMetricsRequest:
    return metrics_pb2.ListAzureMetricsRequest(endpoint_name="ep", **fields)


def test_endpoint_metrics_split_by_deployment_in_azures_shape() -> None:
    request = _request(
        metricnames="RequestsPerMinute",
        timespan="2026-11-26T08:57:00Z/PT3M",
        aggregation="Average,Total",
        filter="deployment eq '*'",
    )
    query = am.parse(request, 60, NOW)
    points = [_point("", 0, 5), _point("blue", 0, 3), _point("green", 0, 2), _point("blue", 2, 4)]
    out = json_format.MessageToDict(am.answer(request, query, points))
    assert out["timespan"] == "2026-11-26T08:57:00Z/2026-11-26T09:00:00Z"
    assert out["interval"] == "PT1M"
    [requests] = out["value"]
    assert requests["name"] == {"value": "RequestsPerMinute", "localizedValue": "RequestsPerMinute"}
    assert requests["unit"] == "Count" and requests["errorCode"] == "Success"
    assert requests["id"].endswith(
        "/onlineEndpoints/ep/providers/Microsoft.Insights/metrics/RequestsPerMinute"
    )
    blue, green = requests["timeseries"]
    assert blue["metadatavalues"] == [
        {"name": {"value": "deployment", "localizedValue": "deployment"}, "value": "blue"}
    ]
    assert [d.get("total") for d in blue["data"]] == [3.0, None, 4.0]  # every interval listed
    assert blue["data"][0] == {"timeStamp": "2026-11-26T08:57:00Z", "average": 3.0, "total": 3.0}
    assert green["data"][0]["average"] == 2.0 and "average" not in green["data"][1]


def test_one_series_without_a_filter_and_deployment_scope() -> None:
    request = _request(timespan="PT3M", metricnames="RequestsPerMinute,RequestLatency_P99")
    out = am.answer(request, am.parse(request, 60, NOW), [_point("", 1, 7), _point("blue", 1, 7)])
    [series] = out.value[0].timeseries
    assert not series.metadatavalues and series.data[1].average == 7.0
    assert out.value[1].unit == "MilliSeconds"
    assert out.value[1].timeseries[0].data[1].average == 12.5
    scoped = metrics_pb2.ListAzureMetricsRequest(
        endpoint_name="ep", deployment_name="blue", metricnames="CpuUtilizationPercentage"
    )
    out = am.answer(scoped, am.parse(scoped, 60, NOW), [_point("blue", 1, 7)])
    assert out.namespace.endswith("/onlineEndpoints/deployments") and out.value[0].unit == "Percent"
    assert [d.average for d in out.value[0].timeseries[0].data if d.HasField("average")] == [40.0]


def test_requests_split_by_status_code_class() -> None:
    """Azure's statusCodeClass dimension of RequestsPerMinute: one series per class."""
    request = _request(
        timespan="PT3M", aggregation="Average,Total", filter="statusCodeClass eq '*'"
    )
    point = _point("", 1, 5)
    point.responses_by_status_class.update({"2xx": 4, "5xx": 1})
    out = json_format.MessageToDict(am.answer(request, am.parse(request, 60, NOW), [point]))
    ok, failed = out["value"][0]["timeseries"]
    assert ok["metadatavalues"][0] == {
        "name": {"value": "statusCodeClass", "localizedValue": "statusCodeClass"},
        "value": "2xx",
    }
    assert ok["data"][1]["total"] == 4.0 and failed["data"][1]["average"] == 1.0
    only = _request(timespan="PT3M", filter="statusCodeClass eq '5xx'")
    out = json_format.MessageToDict(am.answer(only, am.parse(only, 60, NOW), [point]))
    assert [t["metadatavalues"][0]["value"] for t in out["value"][0]["timeseries"]] == ["5xx"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"metricnames": "Requests"}, "metricnames: 'Requests' is not a metric"),
        ({"metricnames": "CpuUtilizationPercentage"}, "is a deployment metric"),
        ({"interval": "PT30S"}, "whole number of minutes"),
        ({"interval": "5m"}, "not an ISO 8601 duration"),
        ({"aggregation": "Maximum"}, "aggregation 'maximum'"),
        ({"metricnames": "RequestLatency_P50", "aggregation": "Total"}, "RequestsPerMinute only"),
        ({"timespan": "yesterday/today"}, "timespan"),
        ({"timespan": "2026-11-26T09:00:00Z/2026-11-26T08:00:00Z"}, "not before the end"),
        ({"filter": "instance eq 'x'"}, "$filter"),
        ({"metricnames": "RequestLatency_P99", "filter": "statusCode eq '*'"}, "only Requests"),
    ],
)
def test_bad_queries_name_the_parameter(fields: dict[str, str], says: str) -> None:
    with pytest.raises(am.BadQuery) as caught:
        am.parse(_request(**fields), 60, NOW)
    assert says in str(caught.value)
