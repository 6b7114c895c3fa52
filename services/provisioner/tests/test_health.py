"""When probes are due and what their deadlines are."""

from __future__ import annotations

from sluice.common.resources import Probe
from sluice.provisioner.health import liveness_due, readiness_deadline


def test_readiness_deadline_is_the_initial_delay_plus_the_failures_allowed() -> None:
    assert readiness_deadline(Probe(initial_delay_s=10, period_s=10, failure_threshold=30)) == 310


def test_liveness_waits_for_the_initial_delay_then_follows_the_period() -> None:
    probe = Probe(initial_delay_s=10, period_s=5)
    assert not liveness_due(age_s=9, since_last_s=100, probe=probe)
    assert liveness_due(age_s=10, since_last_s=100, probe=probe)
    assert not liveness_due(age_s=30, since_last_s=4.9, probe=probe)
    assert liveness_due(age_s=30, since_last_s=5, probe=probe)
