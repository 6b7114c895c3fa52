"""The provisioner's usage samples, published as it publishes them, land in the buckets."""

from __future__ import annotations

import json
import time

from faststream.nats import NatsBroker

from sluice.common.settings import Settings
from sluice.metrics.buckets import Buckets
from sluice.metrics.usage import subscribe_usage, usage_subject
from sluice.testing.wait import wait_for_async


async def test_usage_samples_fill_the_minute_buckets(
    nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    subject = usage_subject(sluice_settings.events_subject_prefix)
    buckets = Buckets()
    broker = NatsBroker(sluice_settings.nats_url, logger=None)
    subscribe_usage(broker, subject, buckets)
    await broker.start()
    await broker.connection.flush()  # the server has our subscription before we publish
    try:
        now = time.time()
        root = subject.removesuffix(".*.*")
        for instance, cpu in (("i-1", 30.0), ("i-2", 50.0)):
            sample = {
                "instance": instance,
                "endpoint": "shop",
                "deployment": "blue",
                "cpu_percent": cpu,
                "rss_bytes": 256,
                "memory_limit_bytes": 1024,
                "time": now,
            }
            await nats_broker.publish(json.dumps(sample).encode(), f"{root}.shop.blue")
        await nats_broker.publish(b"not json", f"{root}.shop.blue")  # logged, ignored

        async def both_counted() -> bool:
            return sum(b.usage_samples for b in buckets.open.values()) >= 2

        await wait_for_async(both_counted, "both usage samples counted", deadline=30)
        [(key, bucket)] = buckets.open.items()
        assert key[:2] == ("shop", "blue")
        assert bucket.usage_samples == 2
        assert bucket.cpu_sum == 80.0
        assert bucket.memory_sum == 50.0  # 25% each
        assert bucket.instances == {"i-1", "i-2"}
    finally:
        await broker.stop()
