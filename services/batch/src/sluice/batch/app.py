"""Composition root of the batch service: build every object, resume jobs, serve, close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice.batch.api import BatchApi
from sluice.batch.events import subscribe_deployment_events
from sluice.batch.fetch import UrlPolicy, own_addresses
from sluice.batch.jobs import JobStore
from sluice.batch.lease import LeaseHeld, ServiceLease
from sluice.batch.runner import RunnerContext
from sluice.batch.service import BatchService
from sluice.batch.spares import MAX_PER_KEY, SparePool
from sluice.common.access import UserTokens
from sluice.common.artifacts import ArtifactStore
from sluice.common.catalogue import Catalogue
from sluice.common.environments import EnvironmentBuilder
from sluice.common.events import (
    EventPublisher,
    Outbox,
    OutboxRelay,
    create_broker,
    ensure_events_stream,
)
from sluice.common.grpc_server import GrpcServer
from sluice.common.log import get_logger
from sluice.common.mongo import create_mongo_client, database, require_uri
from sluice.common.nats_auth import JobUsers
from sluice.common.nats_callout import JobCallout
from sluice.common.prometheus import start_exporter
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.settings import Settings
from sluice.v1 import assets_pb2_grpc, batch_pb2, batch_pb2_grpc

log = get_logger(__name__)
SERVICE_NAME = batch_pb2.DESCRIPTOR.services_by_name["Batch"].full_name
SOURCE = "sluice/batch"
PRUNE_EVERY_S = 60.0
SETTLE_EVERY_S = 30.0


class BatchServiceSettings(BaseSettings):
    """The batch service's own settings (`SLUICE_BATCH_*`)."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_BATCH_", extra="ignore")

    # The one-service-per-database lease (lease.py): renewed every third of it; a stopped
    # service's successor waits at most this long.
    lease_ttl_s: float = 15.0


def batch_prefix(settings: Settings) -> str:
    """`sluice.events` -> `sluice.batch`: the subjects of job queues and results."""
    return settings.events_subject_prefix.rsplit(".", 1)[0] + ".batch"


def job_users(settings: Settings) -> JobUsers | JobCallout | None:
    """Who gives each job's workers (deployment code) a NATS user of that job alone:
    `sluice up`'s nats-server configuration, reloaded (`nats_auth_dir`), or, in compose and
    Kubernetes, nats-server's auth callout answered by this service (its seed file)."""
    if settings.nats_auth_dir:
        return JobUsers(settings.nats_auth_dir)
    if settings.nats_callout_seed_file:
        return JobCallout.from_file(settings.nats_callout_seed_file)
    if settings.nats_url and urlparse(settings.nats_url).username:
        # Workers would get the service's own URL, its credentials with it: refuse to start.
        raise ValueError(
            "the batch service's NATS URL carries its credentials, and nothing gives each "
            "job's workers a NATS user of their own (SLUICE_NATS_AUTH_DIR or "
            "SLUICE_NATS_CALLOUT_SEED_FILE): deployment code would hold the service's "
            "credentials. Configure one of the two."
        )
    return None  # an operator's NATS without authentication: workers use the service's URL


async def prune_spares(spares: SparePool) -> None:
    while True:
        await asyncio.sleep(PRUNE_EVERY_S)
        spares.prune()


async def settle_deployments(service: BatchService) -> None:
    """Now and then, settle deployments left waiting: an event a consumer never got (a NATS
    outage) would otherwise leave one Creating until the next start."""
    while True:
        await asyncio.sleep(SETTLE_EVERY_S)
        try:
            await service.settle_waiting()
        except Exception as exc:  # the loop must outlive a bad pass (Mongo down)
            log.warning("settle_waiting_failed", error=repr(exc))


async def serve(settings: Settings) -> None:
    state_dir = settings.state_dir.absolute()
    mongo = create_mongo_client(require_uri(settings), appname="sluice-batch")
    broker = create_broker(settings, client_name="sluice-batch")
    await broker.connect()
    service: BatchService | None = None
    # Spares import the deployment's environment before they know their job, so before a
    # Landlock sandbox could name the job's files: sandboxed workers all start cold.
    spares = SparePool(
        state_dir / "batch-spares", max_per_key=0 if settings.landlock else MAX_PER_KEY
    )
    tasks: list[asyncio.Task[None]] = []
    callout: Any = None  # compose and Kubernetes: the auth callout's NATS connection
    relay: OutboxRelay | None = None
    lease: ServiceLease | None = None
    lost = False
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        db = database(mongo, settings)
        lease = ServiceLease(db, "batch", ttl_s=BatchServiceSettings().lease_ttl_s)
        try:
            await lease.acquire()
        except LeaseHeld as exc:
            log.error("batch_not_started", reason=str(exc))
            lease = None
            sys.exit(1)
        publisher = EventPublisher(
            broker,
            source=SOURCE,
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )
        outbox = Outbox(db, publisher)
        await outbox.ensure_indexes()
        relay = OutboxRelay(outbox, publisher)
        tasks.append(asyncio.create_task(relay.run(), name="relay"))
        store = JobStore(db, outbox)
        await store.ensure_indexes()
        assert settings.nats_url
        users = job_users(settings)
        if isinstance(users, JobCallout):  # before any job resumes: its workers reconnect
            callout = await users.serve(settings.nats_url)
        ctx = RunnerContext(
            store=store,
            db=db,
            broker=broker,
            nats_url=settings.nats_url,
            subject_prefix=batch_prefix(settings),
            state_dir=state_dir,
            jobs_dir=state_dir / "jobs",
            environments=EnvironmentBuilder(
                settings.envs_folder,
                landlock=settings.landlock,
                sources=[state_dir / "artifacts"],
            ),
            artifacts=ArtifactStore(state_dir / "artifacts"),
            catalogue=Catalogue.load(),
            spares=spares,
            job_users=users,
            landlock=settings.landlock,
        )
        registry = None
        if settings.registry_address:
            channel = grpc.aio.insecure_channel(settings.registry_address)
            registry = assets_pb2_grpc.AssetsStub(channel)
        roots = [Path(p) for p in settings.batch_path_roots.split(os.pathsep) if p]
        urls = UrlPolicy.parse(settings.batch_url_allow, own_addresses([settings.host]))
        service = BatchService(ctx, Path(state_dir), registry, settings.admin_token, roots, urls)
        api = BatchApi(service, settings.domain)
        server = GrpcServer(
            host=settings.host,
            port=settings.ports.batch,
            service_names=[SERVICE_NAME],
            register=lambda s: batch_pb2_grpc.add_BatchServicer_to_server(api, s),
            admin_token=settings.admin_token,
            token_verifier=UserTokens(db).verify,  # users' tokens, by role
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
        await service.settle_waiting()  # created or updated while no batch service ran
        tasks.append(asyncio.create_task(settle_deployments(service), name="settle"))
        tasks.append(asyncio.create_task(prune_spares(spares), name="prune-spares"))
        keeping = asyncio.create_task(lease.keep(), name="lease")
        tasks.append(keeping)
        stopping = asyncio.ensure_future(wait_for_shutdown_signal())
        await asyncio.wait([stopping, keeping], return_when=asyncio.FIRST_COMPLETED)
        if keeping.done():
            lost = True  # another service may take the jobs over: stop running them now
            log.error("batch_lease_lost", holder=lease.holder)
        else:
            log.info("batch_stopping", signal=stopping.result().name)
        stopping.cancel()
        await server.stop()
    finally:
        for task in tasks:
            task.cancel()
        if service is not None:
            await service.shutdown()
        spares.close()
        if relay is not None:
            with contextlib.suppress(Exception):  # what is left is relayed at the next start
                await asyncio.wait_for(relay.drain(), timeout=3)
        if lease is not None and not lost:
            with contextlib.suppress(Exception):
                await lease.release()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.stop(), timeout=3)
        if callout is not None:
            with contextlib.suppress(Exception):
                await callout.close()
        await mongo.close()
    if lost:
        sys.exit(1)
