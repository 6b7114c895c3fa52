"""The autoscaling rule (HPA's): proportional, bounded, quick out, slow in."""

from __future__ import annotations

from sluice.common.resources import ScaleSettings
from sluice.provisioner.autoscaler import SCALE_IN_POLLS, Autoscaler, LocalScaling, wanted

SCALE = ScaleSettings(
    type="target_utilization", min_instances=1, max_instances=5, target_utilization_percentage=50
)


def test_wanted_is_proportional_and_bounded() -> None:
    assert wanted(2, 1.0, SCALE) == 4  # twice the target: twice the instances
    assert wanted(2, 0.52, SCALE) == 2  # within 10% of the target: no change
    assert wanted(4, 0.1, SCALE) == 1
    assert wanted(4, 5.0, SCALE) == 5  # never above max_instances
    assert wanted(3, 0.0, SCALE) == 1  # never below min_instances


def test_scale_out_at_once_scale_in_after_a_streak() -> None:
    scaler = Autoscaler(desired=1)
    assert scaler.poll(1.0, SCALE) == 2
    for _ in range(SCALE_IN_POLLS - 1):
        assert scaler.poll(0.05, SCALE) == 2
    assert scaler.poll(0.05, SCALE) == 1


def test_a_busy_poll_breaks_the_scale_in_streak() -> None:
    scaler = Autoscaler(desired=3)
    for _ in range(SCALE_IN_POLLS - 1):
        scaler.poll(0.05, SCALE)
    scaler.poll(0.5, SCALE)
    assert scaler.poll(0.05, SCALE) == 3


def test_local_scaling_follows_the_count_or_the_autoscaler_once_per_interval() -> None:
    scaling = LocalScaling()
    fixed = ScaleSettings()
    assert scaling.desired(3, fixed) == 3
    assert scaling.poll(0.0, 3, fixed, busy=300.0, capacity=300.0) is None  # no autoscaling
    auto = SCALE.model_copy(update={"polling_interval_s": 10})
    assert scaling.desired(1, auto) == 1
    assert scaling.poll(100.0, 1, auto, busy=100.0, capacity=100.0) == (1, 2)  # 100% of 50%
    assert scaling.desired(1, auto) == 2
    assert scaling.poll(105.0, 1, auto, busy=200.0, capacity=200.0) is None  # within the interval
    assert scaling.poll(111.0, 1, auto, busy=0.0, capacity=0.0) is None  # nothing measured yet
    assert scaling.desired(3, fixed) == 3  # autoscaling switched off: the count again
