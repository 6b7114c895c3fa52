"""A job's work queue on a real nats-server."""

from __future__ import annotations

import uuid

from faststream.nats import NatsBroker
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig

from sluice.batch.queue import DURABLE, JobQueue


async def test_a_consumer_from_before_workers_counted_attempts_loses_its_limit(
    nats_broker: NatsBroker,
) -> None:
    """A job running across the upgrade: its consumer (max_deliver = max_retries + 1) is
    given no limit when its runner declares the queue again, its pending message kept."""
    queue = JobQueue(f"old-{uuid.uuid4().hex[:8]}", "sluice.batch")
    js = nats_broker.connection.jetstream()
    await js.add_stream(
        StreamConfig(
            name=queue.work_stream,
            subjects=[queue.work_subject],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    old = ConsumerConfig(
        durable_name=DURABLE,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=5.0,
        max_deliver=4,
        max_ack_pending=-1,
    )
    await js.add_consumer(queue.work_stream, old)
    await js.publish(queue.work_subject, b"mini-batch 0")
    try:
        await queue.declare(nats_broker, timeout_s=30)
        info = await js.consumer_info(queue.work_stream, DURABLE)
        assert info.config.max_deliver == -1
        assert info.config.ack_wait == 5.0 and info.num_pending == 1
        await queue.declare(nats_broker, timeout_s=30)  # and again: nothing changes
        assert (await js.consumer_info(queue.work_stream, DURABLE)).config.max_deliver == -1
    finally:
        await js.delete_stream(queue.work_stream)
        await js.delete_stream(queue.results_stream)
