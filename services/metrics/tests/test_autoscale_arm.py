"""Autoscale settings <-> Azure Monitor's autoscalesettings resource: Azure's spellings,
the recurring profile's end as Azure's paired profile, and refusals naming the field."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from sluice.common.autoscale.model import (
    AutoscaleError,
    AutoscaleProfile,
    AutoscaleRecurrence,
    AutoscaleRule,
    AutoscaleSetting,
    validate,
)
from sluice.metrics import autoscale_arm
from sluice.v1 import autoscale_pb2 as pb

SETTING = AutoscaleSetting(
    name="blue-scale",
    endpoint_name="ep",
    deployment_name="blue",
    profiles=[
        AutoscaleProfile(
            name="default",
            min_count=1,
            default_count=2,
            max_count=5,
            rules=[
                AutoscaleRule(metric="CpuUtilizationPercentage", operator=">", threshold=70),
                AutoscaleRule(
                    metric="RequestLatency_P99",
                    metric_endpoint="ep",
                    operator="<=",
                    threshold=20,
                    time_aggregation="max",
                    scale="in",
                    value=50,
                    percent=True,
                    cooldown_s=600,
                ),
            ],
        ),
        AutoscaleProfile(
            name="weekend",
            min_count=0,
            default_count=1,
            max_count=1,
            timezone="W. Europe Standard Time",
            recurrence=AutoscaleRecurrence(days=["saturday", "sunday"], start="08:00", end="20:30"),
        ),
    ],
)


def _doc(setting: AutoscaleSetting) -> dict[str, object]:
    return {"spec": setting.model_dump(), "version": 4, "state": {"capacity": 2}}


def test_a_setting_in_azures_shape_and_back() -> None:
    res = autoscale_arm.resource(_doc(SETTING))
    out = json_format.MessageToDict(res)
    assert out["type"] == "Microsoft.Insights/autoscaleSettings"
    assert out["id"].endswith("/providers/Microsoft.Insights/autoscalesettings/blue-scale")
    props = out["properties"]
    assert props["targetResourceUri"].endswith("/onlineEndpoints/ep/deployments/blue")
    assert props["enabled"] is True and props["currentCapacity"] == 2
    default, weekend, back = props["profiles"]
    assert default["capacity"] == {"minimum": "1", "maximum": "5", "default": "2"}
    cpu, latency = default["rules"]
    assert cpu["metricTrigger"]["operator"] == "GreaterThan"
    assert (
        cpu["metricTrigger"]["timeWindow"] == "PT5M" and cpu["metricTrigger"]["timeGrain"] == "PT1M"
    )
    assert cpu["scaleAction"] == {
        "direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"
    }  # fmt: skip
    assert latency["metricTrigger"]["metricResourceUri"].endswith("/onlineEndpoints/ep")
    assert latency["metricTrigger"]["timeAggregation"] == "Maximum"
    assert latency["scaleAction"]["type"] == "PercentChangeCount"
    assert latency["scaleAction"]["direction"] == "Decrease"
    assert weekend["recurrence"]["schedule"] == {
        "timeZone": "W. Europe Standard Time", "days": ["Saturday", "Sunday"],
        "hours": [8], "minutes": [0],
    }  # fmt: skip
    assert back["name"] == '{"name": "default", "for": "weekend"}'
    assert back["recurrence"]["schedule"]["hours"] == [20]
    assert back["recurrence"]["schedule"]["minutes"] == [30]
    # What a GET answers, PUT back, is the same setting.
    assert autoscale_arm.setting_in("blue-scale", res) == SETTING


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"properties": {"targetResourceUri": "/x/y"}}, "properties.targetResourceUri"),
        ({"properties": {"targetResourceUri": "/onlineEndpoints/ep"}}, "a deployment's id"),
        ({"rule": {"metricTrigger": {"operator": "Bigger"}}}, "rules[0].metricTrigger.operator"),
        ({"rule": {"metricTrigger": {"timeWindow": "5m"}}}, "timeWindow"),
        ({"rule": {"scaleAction": {"type": "Double"}}}, "rules[0].scaleAction"),
        ({"rule": {"scaleAction": {"value": "two"}}}, "scaleAction.value"),
        ({"tags": {"a": "b"}}, "tags"),
        ({"name": "other"}, "must match"),
    ],
)
def test_bad_resources_name_the_field(change: dict[str, object], says: str) -> None:
    body = json_format.MessageToDict(autoscale_arm.resource(_doc(SETTING)))
    rule = body["properties"]["profiles"][0]["rules"][0]
    for key, value in change.items():
        if key == "rule":
            for part, fields in value.items():  # type: ignore[attr-defined]
                rule[part].update(fields)
        elif key == "properties":
            body["properties"].update(value)  # type: ignore[call-overload]
        else:
            body[key] = value
    res = json_format.ParseDict(body, pb.AutoscaleSettingResource())
    with pytest.raises(AutoscaleError) as caught:
        autoscale_arm.setting_in("blue-scale", res)
    assert says in str(caught.value)


def test_divide_per_instance_is_azures_divide_per_instance() -> None:
    rule = AutoscaleRule(metric="RequestsPerMinute", threshold=300, divide_per_instance=True)
    setting = SETTING.model_copy(
        update={"profiles": [SETTING.profiles[0].model_copy(update={"rules": [rule]})]}
    )
    res = autoscale_arm.resource(_doc(setting))
    trigger = json_format.MessageToDict(res)["properties"]["profiles"][0]["rules"][0]
    assert trigger["metricTrigger"]["dividePerInstance"] is True
    assert autoscale_arm.setting_in("blue-scale", res) == setting
    # Azure's templates often say false; absent is false too.
    body = json_format.MessageToDict(res)
    body["properties"]["profiles"][0]["rules"][0]["metricTrigger"]["dividePerInstance"] = False
    back = autoscale_arm.setting_in(
        "blue-scale", json_format.ParseDict(body, pb.AutoscaleSettingResource())
    )
    assert back.profiles[0].rules[0].divide_per_instance is False


def test_an_overnight_profile_round_trips_as_azs_pair() -> None:
    """az's `--recurrence week mon tue wed thu fri --start 22:00 --end 06:00`: the profile
    starts at 22:00 and its paired default at 06:00 on the same days; read back, it is the
    night from each day to the next, which validation accepts."""
    night = AutoscaleProfile(
        name="night",
        min_count=1,
        default_count=1,
        max_count=1,
        recurrence=AutoscaleRecurrence(
            days=["monday", "tuesday", "wednesday", "thursday", "friday"],
            start="22:00",
            end="06:00",
        ),
    )
    setting = SETTING.model_copy(update={"profiles": [SETTING.profiles[0], night]})
    res = autoscale_arm.resource(_doc(setting))
    _, start, back = json_format.MessageToDict(res)["properties"]["profiles"]
    assert start["recurrence"]["schedule"]["hours"] == [22]
    assert back["name"] == '{"name": "default", "for": "night"}'
    assert back["recurrence"]["schedule"]["hours"] == [6]
    assert validate(autoscale_arm.setting_in("blue-scale", res)) == setting
