"""The provisioner's usage samples (`sluice.usage.<endpoint>.<deployment>`, core NATS)
into the same minute buckets as the requests: CPU %, memory % and instance ids."""

from __future__ import annotations

import time

from faststream.nats import NatsBroker, NatsMessage
from pydantic import BaseModel, ValidationError

from sluice.common.log import get_logger
from sluice.metrics.buckets import Buckets

log = get_logger(__name__)


class UsageSample(BaseModel):
    """What sluice.provisioner.reconciler.usage_sample sends."""

    instance: str
    endpoint: str
    deployment: str
    cpu_percent: float
    rss_bytes: int
    memory_limit_bytes: int | None = None
    time: float | None = None

    @property
    def memory_percent(self) -> float:
        if not self.memory_limit_bytes:
            return 0.0
        return 100.0 * self.rss_bytes / self.memory_limit_bytes


def usage_subject(events_subject_prefix: str) -> str:
    """`sluice.events` -> `sluice.usage.*.*` (the provisioner's rule, same prefix root)."""
    return events_subject_prefix.rsplit(".", 1)[0] + ".usage.*.*"


def subscribe_usage(broker: NatsBroker, subject: str, buckets: Buckets) -> None:
    """Register the subscriber (before `broker.start()`)."""

    @broker.subscriber(subject)
    async def on_usage(message: NatsMessage) -> None:
        # The raw body: FastStream would decode JSON into a dict before any model sees it.
        try:
            sample = UsageSample.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning("usage_sample_invalid", error=str(exc)[:300])
            return
        buckets.add_usage(
            endpoint=sample.endpoint,
            deployment=sample.deployment,
            instance=sample.instance,
            time_s=sample.time or time.time(),
            cpu_percent=sample.cpu_percent,
            memory_percent=sample.memory_percent,
        )
