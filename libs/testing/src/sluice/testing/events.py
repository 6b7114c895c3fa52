"""Events as a test reads them back from JetStream (what subscribers would get)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from sluice.common.settings import Settings


def scaled_events(settings: Settings, deployment: str = "blue") -> list[dict[str, Any]]:
    """The `autoscale.scaled` events published so far for `deployment` (from JetStream)."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await nats.connect(settings.nats_url or "")
        durable = f"scaled-{uuid.uuid4().hex[:8]}"
        try:
            sub = await conn.jetstream().pull_subscribe(
                f"{settings.events_subject_prefix}.autoscale.scaled",
                durable=durable,
                stream=settings.events_stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            found: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                found = [json.loads(m.data)["data"] for m in await sub.fetch(100, timeout=1)]
            return [d for d in found if d["deployment"] == deployment]
        finally:
            with contextlib.suppress(Exception):  # it may not have been created
                await conn.jetstream().delete_consumer(settings.events_stream, durable)
            await conn.close()

    return asyncio.run(fetch())
