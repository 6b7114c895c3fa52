"""target_utilization, Kubernetes' HPA rule: proportional to the instances actually
measured, bounded, out at once, in only to the highest recommendation of the scale-in
stabilization window."""

from __future__ import annotations

from sluice.common.resources import ScaleSettings
from sluice.provisioner.autoscaler import Autoscaler, LocalScaling, recommend, wanted

SCALE = ScaleSettings(
    type="target_utilization", min_instances=1, max_instances=5, target_utilization_percentage=50
)
WIDE = ScaleSettings(
    type="target_utilization",
    min_instances=1,
    max_instances=20,
    target_utilization_percentage=70,
    polling_interval_s=1,
)


def test_wanted_is_proportional_and_bounded() -> None:
    assert wanted(2, 1.0, SCALE) == 4  # twice the target: twice the instances
    assert wanted(2, 0.52, SCALE) == 2  # within 10% of the target: no change
    assert wanted(4, 0.1, SCALE) == 1
    assert wanted(4, 5.0, SCALE) == 5  # never above max_instances
    assert wanted(3, 0.0, SCALE) == 1  # never below min_instances


def test_the_ratio_applies_to_the_measured_instances() -> None:
    # 1 measured instance at 100% of a 50% target wants 2, whatever else is starting.
    assert recommend(1, 1, 1.0, SCALE) == 2
    assert recommend(2, 1, 1.0, SCALE) == 2
    # Over the target but the measured ones alone need fewer than desired: keep (the
    # instances still starting count as idle, as the HPA counts unready pods).
    assert recommend(4, 1, 0.8, SCALE) == 4
    # Under the target: never more.
    assert recommend(2, 3, 0.4, SCALE) == 2
    assert recommend(4, 2, 0.1, SCALE) == 1
    assert recommend(3, 2, 0.52, SCALE) == 3  # within the tolerance: the desired count


def test_target_utilization_does_not_compound_while_new_instances_start() -> None:
    """The audit's case: one saturated instance serving (the new ones not measured yet),
    polls 1 s apart. Applied to the desired count it went 1 -> 2 -> 3 -> 5 -> 8 -> 12."""
    s = LocalScaling()
    s.desired(1, WIDE)
    for t in range(6):
        s.poll(float(t + 1), 1, WIDE, busy=100.0, capacity=100.0, measured=1)
    assert s.desired(1, WIDE) == 2  # ceil(1 x 100/70)
    # Once both serve and stay saturated, the load needs more: out again, at once.
    assert s.poll(7.0, 1, WIDE, busy=200.0, capacity=200.0, measured=2) == (2, 3)


def test_scale_out_at_once_scale_in_after_the_stabilization_window() -> None:
    scaler = Autoscaler(desired=1, stabilization_s=10.0)
    assert scaler.poll(0.0, 1.0, 1, SCALE) == 2
    for t in range(1, 11):  # idle, but the window still holds the 2
        assert scaler.poll(float(t), 0.05, 2, SCALE) == 2
    assert scaler.poll(11.0, 0.05, 2, SCALE) == 1  # 10 s of nothing above 1


def test_scale_in_goes_to_the_highest_recommendation_of_the_window() -> None:
    scaler = Autoscaler(desired=4, stabilization_s=10.0)
    scaler.poll(0.0, 0.5, 4, SCALE)  # at the target: 4
    scaler.poll(5.0, 0.375, 4, SCALE)  # 3 would do
    for t in range(6, 11):
        assert scaler.poll(float(t), 0.1, 4, SCALE) == 4  # the 4 of t=0 is in the window
    assert scaler.poll(11.0, 0.1, 4, SCALE) == 3  # the 3 of t=5 still is
    assert scaler.poll(16.0, 0.1, 4, SCALE) == 1


def test_a_busy_poll_restarts_the_window() -> None:
    scaler = Autoscaler(desired=3, stabilization_s=10.0)
    for t in range(10):
        scaler.poll(float(t), 0.05, 3, SCALE)
    scaler.poll(10.0, 0.5, 3, SCALE)  # at the target again: 3 recommended
    assert scaler.poll(15.0, 0.05, 3, SCALE) == 3
    assert scaler.poll(21.0, 0.05, 3, SCALE) == 1


def test_no_scale_in_within_a_window_of_the_first_poll() -> None:
    scaler = Autoscaler(desired=3, stabilization_s=10.0)
    assert scaler.poll(100.0, 0.05, 3, SCALE) == 3
    assert scaler.poll(111.0, 0.05, 3, SCALE) == 1


def test_local_scaling_follows_the_count_or_the_autoscaler_once_per_interval() -> None:
    scaling = LocalScaling()
    fixed = ScaleSettings()
    assert scaling.desired(3, fixed) == 3
    assert scaling.poll(0.0, 3, fixed, busy=300.0, capacity=300.0, measured=3) is None
    auto = SCALE.model_copy(update={"polling_interval_s": 10})
    assert scaling.desired(1, auto) == 1
    assert scaling.poll(100.0, 1, auto, busy=100.0, capacity=100.0, measured=1) == (1, 2)
    assert scaling.desired(1, auto) == 2
    # within the interval
    assert scaling.poll(105.0, 1, auto, busy=200.0, capacity=200.0, measured=2) is None
    # nothing measured yet
    assert scaling.poll(111.0, 1, auto, busy=0.0, capacity=0.0, measured=0) is None
    assert scaling.desired(3, fixed) == 3  # autoscaling switched off: the count again
