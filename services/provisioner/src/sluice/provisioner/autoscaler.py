"""The local backend's instance count: an autoscale setting's decision (docs/autoscale.md)
when one targets the deployment, else `scale_settings: type: target_utilization`,
else `instance_count`.

target_utilization is the HPA rule kind of the autoscale engine
(`sluice.common.autoscale.engine.target_count`): desired = ceil(current x
utilization / target), within [min_instances, max_instances], ignoring changes
within 10% of the target. It is fed here, every `polling_interval`, with the CPU the
instances' workers use as the provisioner measures it each second (no round trip
through the metrics service's minute buckets). Scaling out happens at once;
scaling in only after the lower count has been wanted for `SCALE_IN_POLLS` polls
in a row, so a short lull does not drop capacity. Utilization is CPU time over what
the instances' worker processes can use (100% = every worker busy).
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.common.autoscale.engine import target_count
from sluice.common.resources import ScaleSettings

SCALE_IN_POLLS = 5


def wanted(current: int, utilization: float, scale: ScaleSettings) -> int:
    """The HPA rule: how many instances bring utilization to the target."""
    lowest, highest = max(1, scale.min_instances), max(1, scale.max_instances)
    target = scale.target_utilization_percentage / 100
    return target_count(current, utilization, target, lowest, highest)


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
    """The instance count a local deployment wants: an autoscale setting's decision,
    else under target_utilization the Autoscaler's answer to its instances' measured CPU,
    else `instance_count`."""

    def __init__(self) -> None:
        self._autoscaler: Autoscaler | None = None
        self._last_poll = 0.0

    def desired(self, instance_count: int, scale: ScaleSettings, decided: int | None = None) -> int:
        if decided is not None:
            return max(0, decided)  # 0: scaled to zero (the activator holds requests)
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
