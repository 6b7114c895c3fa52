"""The JetStream streams of one job: its work queue and its results.

- `BATCH_WORK_<job>`: retention *work-queue*, one message per mini-batch
  (`Nats-Msg-Id` = job + index, so a runner that publishes again after a
  restart adds nothing); one durable pull consumer, `workers`, shared by every
  worker, with the job's ack-wait and no limit on deliveries (the workers count
  attempts: worker.py).
- `BATCH_RESULTS_<job>`: one subject per mini-batch (`<prefix>.<job>.results.<index>`)
  and one message kept per subject, so the latest outcome of each mini-batch is
  all there is; the runner replays them from the start after a restart to rebuild
  progress. Beside them, one empty message per interrupted delivery
  (`….results.interrupted.<index>.<delivery>`).

Both streams are deleted when the job ends; the job document keeps the totals.
The workers' NATS user (one per job on the local platform: sluice.common.nats_auth)
may reach only these: `worker_permissions`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

from faststream.nats import NatsBroker
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from sluice.common.nats_auth import WORKERS_DURABLE, Permissions, worker_permissions

DURABLE = WORKERS_DURABLE
# Heartbeats keep a long run() alive; a dead worker's mini-batch comes back after this.
MAX_ACK_WAIT_S = 5.0


@dataclass(frozen=True)
class JobQueue:
    job: str
    prefix: str  # e.g. "sluice.batch"

    @property
    def work_stream(self) -> str:
        return f"BATCH_WORK_{self.job}"

    @property
    def work_subject(self) -> str:
        return f"{self.prefix}.{self.job}.work"

    @property
    def results_stream(self) -> str:
        return f"BATCH_RESULTS_{self.job}"

    @property
    def results_prefix(self) -> str:
        return f"{self.prefix}.{self.job}.results"

    @property
    def inbox_prefix(self) -> str:
        """The workers' inboxes (replies to their pulls and publishes): theirs alone."""
        return f"_INBOX_{self.job}"

    def worker_permissions(self) -> Permissions:
        """Pull from and ack this job's queue, publish and count its results, receive on
        its inboxes."""
        return worker_permissions(
            f"{self.work_stream}.{DURABLE}",
            self.results_stream,
            self.results_prefix,
            self.inbox_prefix,
        )

    @staticmethod
    def ack_wait(timeout_s: float) -> float:
        return max(1.0, min(float(timeout_s), MAX_ACK_WAIT_S))

    async def declare(self, broker: NatsBroker, *, timeout_s: float) -> None:
        """Create (or keep) both streams and the workers' consumer; idempotent."""
        js = broker.connection.jetstream()
        await _ensure_stream(
            js,
            StreamConfig(
                name=self.work_stream,
                subjects=[self.work_subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=3600,
            ),
        )
        await _ensure_stream(
            js,
            StreamConfig(
                name=self.results_stream,
                subjects=[f"{self.results_prefix}.>"],
                storage=StorageType.FILE,
                max_msgs_per_subject=1,
            ),
        )
        try:
            info = await js.consumer_info(self.work_stream, DURABLE)
        except NotFoundError:
            await js.add_consumer(
                self.work_stream,
                ConsumerConfig(
                    durable_name=DURABLE,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait(timeout_s),
                    max_deliver=-1,  # the workers count attempts (worker.py)
                    max_ack_pending=-1,
                ),
            )
            return
        if info.config.max_deliver not in (None, -1):
            # A job that was running across the upgrade to workers that count attempts: its
            # consumer gave up after max_retries + 1 deliveries, and nothing listens for
            # that any more (a mini-batch would never get a result). max_deliver is one of
            # a consumer's editable fields: the same config, without the limit.
            await js.add_consumer(self.work_stream, replace(info.config, max_deliver=-1))

    async def publish(self, broker: NatsBroker, index: int, body: bytes) -> None:
        await broker.publish(
            body,
            self.work_subject,
            headers={"Nats-Msg-Id": f"{self.job}-{index}"},
            stream=self.work_stream,
            timeout=10.0,
        )

    async def delete(self, broker: NatsBroker) -> None:
        js = broker.connection.jetstream()
        for stream in (self.work_stream, self.results_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)


async def _ensure_stream(js: Any, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
