"""Minute documents -> steps: an endpoint's total adds its deployments' instances."""

from __future__ import annotations

from datetime import UTC, datetime

from sluice.common.mongo import Document
from sluice.metrics import query


def doc(deployment: str, minute: int, instances: list[str]) -> Document:
    return {
        "endpoint": "ep",
        "deployment": deployment,
        "minute": datetime.fromtimestamp(minute, UTC),
        "usage_samples": len(instances),
        "instances": dict.fromkeys(instances, 1),
    }


def test_endpoint_total_instance_count_is_the_sum_of_its_deployments() -> None:
    docs = [doc("blue", 600, ["a", "b"]), doc("green", 600, ["c", "d", "e"])]
    series = query.steps(docs, step_s=60)
    assert series[query.ENDPOINT_TOTAL][600].values(60)["DeploymentCapacity"] == 5
    assert series["blue"][600].instance_count == 2
    assert series["green"][600].instance_count == 3


def test_at_a_longer_step_the_count_is_the_busiest_minute() -> None:
    # blue scales 2 -> 1 while green starts: the 5-minute step shows the most that ran at
    # once (3 in minute 660), not the 4 distinct instances seen over the step.
    docs = [
        doc("blue", 600, ["a", "b"]),
        doc("blue", 660, ["a"]),
        doc("green", 660, ["c", "d"]),
        doc("green", 720, ["d"]),
    ]
    series = query.steps(docs, step_s=300)
    assert series[query.ENDPOINT_TOTAL][600].instance_count == 3
    assert series["blue"][600].instance_count == 2
    assert series["green"][600].instance_count == 2


def test_same_instance_ids_in_two_deployments_are_two_instances() -> None:
    docs = [doc("blue", 600, ["1"]), doc("green", 600, ["1"])]
    assert query.steps(docs, step_s=60)[query.ENDPOINT_TOTAL][600].instance_count == 2
