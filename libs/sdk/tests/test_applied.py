"""`AppliedWatcher` (the CLI's wait for the gateway) against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from faststream.nats import NatsBroker

from sluice.common.events import EventPublisher
from sluice.common.events.catalogue import (
    TRAFFIC_APPLIED,
    TRAFFIC_REJECTED,
    TrafficApplied,
    TrafficRejected,
)
from sluice.common.settings import Settings
from sluice.common.supervisor import free_port
from sluice.sdk.applied import AppliedWatcher, EventBusDown, NotApplied


def publisher(broker: NatsBroker, settings: Settings) -> EventPublisher:
    return EventPublisher(
        broker,
        source="sluice/traffic",
        subject_prefix=settings.events_subject_prefix,
        stream=settings.events_stream,
    )


async def test_waits_for_the_version_and_reports_a_rejection(
    nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    assert sluice_settings.nats_url
    events = publisher(nats_broker, sluice_settings)
    watcher = AppliedWatcher(sluice_settings.nats_url, sluice_settings.events_subject_prefix)
    with watcher:
        applied = TrafficApplied(snapshot="s1", endpoints={"ep": 3, "other": 9})
        await events.publish(TRAFFIC_APPLIED, applied, subject=None, actor="traffic")
        await asyncio.to_thread(watcher.wait, "ep", 3, 10)  # that version is live
        await asyncio.to_thread(watcher.wait, "ep", 2, 10)  # and so is anything older
        with pytest.raises(NotApplied, match="not applied it within 0s"):
            await asyncio.to_thread(watcher.wait, "ep", 4, 0.2)
        rejected = TrafficRejected(
            snapshot="s2", type="cluster", error="bad cluster", endpoints={"ep": 4}
        )
        await events.publish(TRAFFIC_REJECTED, rejected, subject=None, actor="traffic")
        with pytest.raises(NotApplied, match="the gateway rejected the change: bad cluster"):
            await asyncio.to_thread(watcher.wait, "ep", 4, 10)


def test_nats_down_fails_at_once_saying_nothing_changed() -> None:
    started = time.monotonic()
    with (
        pytest.raises(EventBusDown, match="nothing was changed"),
        AppliedWatcher(f"nats://127.0.0.1:{free_port()}", "sluice.events"),
    ):
        pass
    assert time.monotonic() - started < 10
