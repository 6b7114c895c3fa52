"""A deployment at zero while the activator holds a request for it."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, cast

from sluice.provisioner.local_deployment import LocalDeployment, LocalServices


class ZeroDecided:
    """What AutoscaleCounts answers for a setting that decided zero on data from `since`."""

    def __init__(self) -> None:
        self.since = 0.0

    def count(self, key: str, created_at: datetime | None = None) -> int:
        return 0

    def decided_at(self, key: str) -> float:
        return self.since


async def no_usage(_: dict[str, object]) -> None:
    pass


def test_a_held_request_keeps_one_instance_whatever_the_setting_decides() -> None:
    """A cold start can outlast the setting's next decision, which cannot count the held
    request (it is counted once served): while it is held the deployment wants 1, and only
    a decision on data from after the hand-over takes it back to zero."""
    decided = ZeroDecided()
    unused = cast(Any, None)  # the backend, environments, store and routing: not reached
    services = LocalServices(unused, unused, unused, unused, cast(Any, decided))
    blue = LocalDeployment("ep/blue", services, no_usage)
    assert blue._decided() == 0

    blue.activate()
    decided.since = time.time()  # a decision on data entirely after the wake: all idle
    assert blue._decided() == 1

    blue.release()  # handed over to the new instance
    assert blue._decided() == 1  # that decision saw none of what came after the hand-over
    decided.since = time.time() + 1
    assert blue._decided() == 0
