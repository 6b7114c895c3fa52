"""What the provisioner takes from a stored autoscale setting: an enabled setting's
capacity, but not one decided for an earlier deployment of the same name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sluice.provisioner.autoscale_counts import AutoscaleCounts

SPEC = {
    "name": "s",
    "endpoint_name": "shop",
    "deployment_name": "blue",
    "enabled": True,
    "profiles": [{"name": "default", "min_count": 1, "default_count": 2, "max_count": 10}],
}
FIRST = datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)
SECOND = datetime(2026, 11, 26, 19, 59, 58, 500000, tzinfo=UTC)


def setting(capacity: int | None, created_at: str | None, enabled: bool = True) -> dict[str, Any]:
    return {
        "_id": "s",
        "target": "shop/blue",
        "spec": {**SPEC, "enabled": enabled},
        "version": 1,
        "state": {"capacity": capacity, "active_profile": "default",
                  "deployment_created_at": created_at},
        "decisions": [],
    }  # fmt: skip


def counts() -> AutoscaleCounts:
    return AutoscaleCounts(cast(Any, {"autoscale_settings": None}))  # no database reached


def test_a_count_decided_for_an_earlier_deployment_of_the_name_is_not_taken() -> None:
    taken = counts()
    taken._take(setting(9, "2026-11-01T10:00:00.123456Z"))
    assert taken.count("shop/blue", FIRST) == 9
    assert taken.count("SHOP/blue") == 9  # no deployment to compare with
    assert taken.count("shop/blue", SECOND) is None  # deleted and created again: its own count


def test_disabled_or_not_evaluated_is_the_deployments_own_count() -> None:
    taken = counts()
    taken._take(setting(9, "2026-11-01T10:00:00.123456Z", enabled=False))
    assert taken.count("shop/blue", FIRST) is None
    taken._take(setting(None, None))
    assert taken.count("shop/blue", FIRST) is None


def test_a_state_from_before_deployments_were_told_apart_is_taken() -> None:
    taken = counts()
    taken._take(setting(4, None))
    assert taken.count("shop/blue", SECOND) == 4
