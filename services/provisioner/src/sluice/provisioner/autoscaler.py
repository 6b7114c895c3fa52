"""The local backend's instance count: an autoscale setting's decision (docs/autoscale.md)
when one targets the deployment, else `scale_settings: type: target_utilization`,
else `instance_count`.

target_utilization is Kubernetes' HorizontalPodAutoscaler rule, as Azure runs it
(`sluice.common.autoscale.engine.target_count`): desired = ceil(measured x
utilization / target), within [min_instances, max_instances], ignoring changes
within 10% of the target. It is fed here, every `polling_interval`, with the CPU the
instances' workers use as the provisioner measures it each second (no round trip
through the metrics service's minute buckets). Utilization is CPU time over what
the measured instances' worker processes can use (100% = every worker busy).

As the HPA does:
- the ratio applies to the instances actually measured (ready, and past their start-up
  CPU), not to the desired count: instances still starting count as idle when scaling
  out, so one overload asks for the instances it needs once, not again at every poll
  while they start (applied to the desired count it compounded, 1 -> 2 -> 3 -> 5 -> 8 ...
  up to max_instances); a recommendation against the load's direction (more instances
  while under the target, fewer while over it) keeps the count;
- scaling out happens at once; scaling in follows the highest recommendation of the
  last `stabilization_s` (the HPA's scale-down stabilization window, 300 s by default,
  `SLUICE_SCALE_IN_STABILIZATION_S`), so a short lull, or an out-and-back, does not
  drop capacity that is needed again a moment later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sluice.common.autoscale.engine import HPA_TOLERANCE, target_count
from sluice.common.resources import ScaleSettings

SCALE_IN_STABILIZATION_S = 300.0  # Kubernetes' default downscale stabilization window


def wanted(current: int, utilization: float, scale: ScaleSettings) -> int:
    """The HPA rule: how many instances bring utilization to the target."""
    lowest, highest = max(1, scale.min_instances), max(1, scale.max_instances)
    target = scale.target_utilization_percentage / 100
    return target_count(current, utilization, target, lowest, highest)


def recommend(desired: int, measured: int, utilization: float, scale: ScaleSettings) -> int:
    """The HPA's recommendation: the rule applied to the `measured` instances (at
    `utilization`, their mean), the `desired` count when within the tolerance or when the
    rule would go against the load (the instances not measured yet count as idle)."""
    ratio = utilization / (scale.target_utilization_percentage / 100)
    keep = in_bounds(desired, scale)
    if measured <= 0 or abs(ratio - 1) <= HPA_TOLERANCE:
        return keep
    proposal = wanted(measured, utilization, scale)
    if (ratio > 1 and proposal < keep) or (ratio < 1 and proposal > keep):
        return keep
    return proposal


@dataclass
class Autoscaler:
    """The desired instance count of one deployment, updated once per polling interval."""

    desired: int
    stabilization_s: float = SCALE_IN_STABILIZATION_S
    # (poll time, recommendation) within the stabilization window, oldest first
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def poll(self, now: float, utilization: float, measured: int, scale: ScaleSettings) -> int:
        if not self.recommendations:
            # The count it starts from counts as recommended now: no scale-in within a
            # window of the first poll either.
            self.recommendations.append((now, self.desired))
        proposal = recommend(self.desired, measured, utilization, scale)
        self.recommendations.append((now, proposal))
        while self.recommendations[0][0] < now - self.stabilization_s:
            self.recommendations.popleft()
        if proposal > self.desired:
            self.desired = proposal  # out at once
        else:
            self.desired = min(self.desired, max(r for _, r in self.recommendations))
        return self.desired


def in_bounds(count: int, scale: ScaleSettings) -> int:
    return min(max(count, scale.min_instances, 1), scale.max_instances)


class LocalScaling:
    """The instance count a local deployment wants: an autoscale setting's decision,
    else under target_utilization the Autoscaler's answer to its instances' measured CPU,
    else `instance_count`."""

    def __init__(self, stabilization_s: float = SCALE_IN_STABILIZATION_S) -> None:
        self._autoscaler: Autoscaler | None = None
        self._last_poll = 0.0
        self._stabilization_s = stabilization_s

    def desired(self, instance_count: int, scale: ScaleSettings, decided: int | None = None) -> int:
        if decided is not None:
            return max(0, decided)  # 0: scaled to zero (the activator holds requests)
        if scale.type != "target_utilization":
            self._autoscaler = None
            return instance_count
        if self._autoscaler is None:
            self._autoscaler = Autoscaler(
                desired=in_bounds(instance_count, scale), stabilization_s=self._stabilization_s
            )
        return in_bounds(self._autoscaler.desired, scale)

    def poll(
        self,
        now: float,
        instance_count: int,
        scale: ScaleSettings,
        *,
        busy: float,
        capacity: float,
        measured: int,
    ) -> tuple[int, int] | None:
        """Once per polling interval: feed utilization (`busy` of `capacity` CPU %, the
        sums over the `measured` instances); returns (before, after) when the wanted count
        changed."""
        if scale.type != "target_utilization" or capacity <= 0 or measured <= 0:
            return None
        if now - self._last_poll < scale.polling_interval_s:
            return None
        self._last_poll = now
        before = self.desired(instance_count, scale)
        assert self._autoscaler is not None
        after = in_bounds(self._autoscaler.poll(now, busy / capacity, measured, scale), scale)
        return (before, after) if after != before else None
