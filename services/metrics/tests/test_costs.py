"""Cost lines from instance records: time x price, a batch worker counted as its share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sluice.metrics.costs import cost_lines

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def record(started_s: float, stopped_s: float | None, **extra: object) -> dict[str, object]:
    return {
        "endpoint": "e",
        "deployment": "d",
        "instance_type": "Standard_DS3_v2",
        "price_per_hour": 0.293,
        "started_at": (T0 + timedelta(seconds=started_s)).isoformat(),
        "stopped_at": None
        if stopped_s is None
        else (T0 + timedelta(seconds=stopped_s)).isoformat(),
        **extra,
    }


def test_an_online_instance_counts_its_whole_time() -> None:
    [line] = cost_lines([record(0, 3600)], T0, T0 + timedelta(hours=2), T0 + timedelta(hours=2))
    assert line.instance_hours == 1.0 and line.running == 0
    assert line.cost == pytest.approx(0.293)


def test_workers_of_one_batch_instance_cost_one_instance() -> None:
    """Two workers of max_concurrency_per_instance 2 for an hour: one instance-hour; while
    one of them still runs, the instance runs."""
    workers = [record(0, 3600, kind="batch", instance_share=0.5) for _ in range(2)]
    now = T0 + timedelta(hours=2)
    [line] = cost_lines(workers, T0, now, now)
    assert line.kind == "batch" and line.instance_hours == pytest.approx(1.0)
    assert line.cost == pytest.approx(0.293)
    assert line.running == 0
    busy = [
        record(0, 3600, kind="batch", instance_share=0.5),
        record(0, None, kind="batch", instance_share=0.5),
    ]
    [line] = cost_lines(busy, T0, now, now)
    assert line.running == 1
    assert line.instance_hours == pytest.approx(1.5)
