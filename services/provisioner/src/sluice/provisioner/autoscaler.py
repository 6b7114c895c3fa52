"""Autoscaling for `scale_settings: type: target_utilization` on the local backend.

The rule is Kubernetes' HPA rule: desired = ceil(current x utilization / target),
within [min_instances, max_instances], ignoring changes within 10% of the
target. Scaling out happens at once; scaling in only after the lower count has
been wanted for `SCALE_IN_POLLS` polls in a row, so a short lull does not
drop capacity. Utilization is CPU time over what the instances' worker
processes can use (100% = every worker busy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sluice.common.resources import ScaleSettings

TOLERANCE = 0.1
SCALE_IN_POLLS = 5


def wanted(current: int, utilization: float, scale: ScaleSettings) -> int:
    """The HPA rule: how many instances bring utilization to the target."""
    lowest, highest = max(1, scale.min_instances), max(1, scale.max_instances)
    target = scale.target_utilization_percentage / 100
    if current == 0:
        return lowest
    ratio = utilization / target
    if abs(ratio - 1) <= TOLERANCE:
        return min(max(current, lowest), highest)
    return min(max(math.ceil(current * ratio), lowest), highest)


@dataclass
class Autoscaler:
    """The desired instance count of one deployment, updated once per polling interval."""

    desired: int
    low_polls: int = 0

    def poll(self, utilization: float, scale: ScaleSettings) -> int:
        proposal = wanted(self.desired, utilization, scale)
        if proposal > self.desired:
            self.desired, self.low_polls = proposal, 0
        elif proposal < self.desired:
            self.low_polls += 1
            if self.low_polls >= SCALE_IN_POLLS:
                self.desired, self.low_polls = proposal, 0
        else:
            self.low_polls = 0
        return self.desired


def in_bounds(count: int, scale: ScaleSettings) -> int:
    return min(max(count, scale.min_instances, 1), scale.max_instances)


class LocalScaling:
    """The instance count a local deployment wants: `instance_count`, or under
    target_utilization the Autoscaler's answer to its instances' measured CPU."""

    def __init__(self) -> None:
        self._autoscaler: Autoscaler | None = None
        self._last_poll = 0.0

    def desired(self, instance_count: int, scale: ScaleSettings) -> int:
        if scale.type != "target_utilization":
            self._autoscaler = None
            return instance_count
        if self._autoscaler is None:
            self._autoscaler = Autoscaler(desired=in_bounds(instance_count, scale))
        return in_bounds(self._autoscaler.desired, scale)

    def poll(
        self, now: float, instance_count: int, scale: ScaleSettings, busy: float, capacity: float
    ) -> tuple[int, int] | None:
        """Once per polling interval: feed utilization (`busy` of `capacity` CPU %); returns
        (before, after) when the wanted count changed."""
        if scale.type != "target_utilization" or capacity <= 0:
            return None
        if now - self._last_poll < scale.polling_interval_s:
            return None
        self._last_poll = now
        before = self.desired(instance_count, scale)
        assert self._autoscaler is not None
        after = in_bounds(self._autoscaler.poll(busy / capacity, scale), scale)
        return (before, after) if after != before else None
