"""Composition root of the batch service: build every object, resume jobs, serve, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from sluice.batch.api import BatchApi
from sluice.batch.events import subscribe_deployment_events
from sluice.batch.jobs import Job, JobStore
from sluice.batch.runner import RunnerContext
from sluice.batch.service import BatchService
from sluice.batch.spares import SparePool
from sluice.common.artifacts import ArtifactStore
from sluice.common.catalogue import Catalogue
from sluice.common.environments import EnvironmentBuilder
from sluice.common.events import EventPublisher, create_broker, ensure_events_stream
from sluice.common.events.catalogue import BATCH_JOB, BatchJobChanged
from sluice.common.grpc_server import GrpcServer
from sluice.common.log import get_logger
from sluice.common.mongo import create_mongo_client, database, require_uri
from sluice.common.prometheus import start_exporter
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.settings import Settings
from sluice.v1 import assets_pb2_grpc, batch_pb2, batch_pb2_grpc

log = get_logger(__name__)
SERVICE_NAME = batch_pb2.DESCRIPTOR.services_by_name["Batch"].full_name
SOURCE = "sluice/batch"
ACTOR = "sluice-batch"
PRUNE_EVERY_S = 60.0


def batch_prefix(settings: Settings) -> str:
    """`sluice.events` -> `sluice.batch`: the subjects of job queues and results."""
    return settings.events_subject_prefix.rsplit(".", 1)[0] + ".batch"


def job_event(publisher: EventPublisher) -> Callable[[Job], Awaitable[None]]:
    async def publish(job: Job) -> None:
        """`sluice.events.batch.job.<state>`: thin, consumers re-read the job (GetJob)."""
        await publisher.publish(
            BATCH_JOB[job.state.value.lower()],
            BatchJobChanged(
                name=job.name,
                endpoint=job.endpoint_name,
                deployment=job.deployment_name,
                state=job.state.value,
                progress=job.progress.model_dump(),
                cost={**job.cost.model_dump(), "cost": job.cost.cost},
            ),
            subject=job.name,
            actor=job.created_by or ACTOR,
        )

    return publish


async def prune_spares(spares: SparePool) -> None:
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        spares.prune()


async def serve(settings: Settings) -> None:
    state_dir = settings.state_dir.absolute()
    mongo = create_mongo_client(require_uri(settings), appname="sluice-batch")
    broker = create_broker(settings, client_name="sluice-batch")
    await broker.connect()
    service: BatchService | None = None
    spares = SparePool(state_dir / "batch-spares")
    pruning: asyncio.Task[None] | None = None
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        db = database(mongo, settings)
        store = JobStore(db)
        await store.ensure_indexes()
        publisher = EventPublisher(
            broker,
            source=SOURCE,
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )
        assert settings.nats_url
        ctx = RunnerContext(
            store=store,
            db=db,
            broker=broker,
            nats_url=settings.nats_url,
            subject_prefix=batch_prefix(settings),
            jobs_dir=state_dir / "jobs",
            environments=EnvironmentBuilder((settings.envs_dir or state_dir / "envs").absolute()),
            artifacts=ArtifactStore(state_dir / "artifacts"),
            catalogue=Catalogue.load(),
            spares=spares,
            on_state=job_event(publisher),
        )
        registry = None
        if settings.registry_address:
            channel = grpc.aio.insecure_channel(settings.registry_address)
            registry = assets_pb2_grpc.AssetsStub(channel)
        service = BatchService(ctx, Path(state_dir), registry, settings.admin_token)
        api = BatchApi(service)
        server = GrpcServer(
            host=settings.host,
            port=settings.ports.batch,
            service_names=[SERVICE_NAME],
            register=lambda s: batch_pb2_grpc.add_BatchServicer_to_server(api, s),
            admin_token=settings.admin_token,
        )
        await server.start()
        start_exporter(settings)
        await service.resume()
        deployments = subscribe_deployment_events(
            broker,
            stream=settings.events_stream,
            prefix=settings.events_subject_prefix,
            warmer=service,
        )
        await deployments.start()
        pruning = asyncio.create_task(prune_spares(spares))
        signal = await wait_for_shutdown_signal()
        log.info("batch_stopping", signal=signal.name)
        await server.stop()
    finally:
        if pruning is not None:
            pruning.cancel()
        if service is not None:
            await service.shutdown()
        spares.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.stop(), timeout=3)
        await mongo.close()
