"""Composition root of the provisioner: build every object, reconcile, serve, close."""

from __future__ import annotations

import asyncio
import contextlib

from sluice.common.access import UserTokens
from sluice.common.artifacts import ArtifactStore
from sluice.common.catalogue import Catalogue
from sluice.common.environments import EnvironmentBuilder, EnvironmentError_
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
from sluice.common.prometheus import start_exporter
from sluice.common.resources import ComputeKind, EnvironmentSpec, deployment_id
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.settings import Settings
from sluice.provisioner.activator import Activator
from sluice.provisioner.api import ProvisionerApi
from sluice.provisioner.autoscale_counts import AutoscaleCounts, subscribe_autoscale
from sluice.provisioner.events import SOURCE, UsagePublisher, subscribe_registry_events
from sluice.provisioner.kubernetes import (
    ClusterSettings,
    KubernetesBackend,
    KubernetesCompute,
    connect,
)
from sluice.provisioner.local import LocalBackend
from sluice.provisioner.local_deployment import LocalCompute, LocalServices
from sluice.provisioner.preparer import Preparer
from sluice.provisioner.reconciler import Context, Reconciler
from sluice.provisioner.routing import RoutingView, subscribe_applied
from sluice.provisioner.store import ProvisionerStore
from sluice.v1 import provisioner_pb2, provisioner_pb2_grpc

log = get_logger(__name__)
SERVICE_NAME = provisioner_pb2.DESCRIPTOR.services_by_name["Provisioner"].full_name
RESYNC_S = 10.0


def kubernetes_backend(settings: Settings) -> KubernetesBackend | None:
    if settings.kubeconfig is None:
        return None
    cluster = ClusterSettings(
        namespace=settings.kubernetes_namespace,
        image=settings.kubernetes_image,
        collector_max_bytes=settings.data_collector_max_bytes,
        tracing=settings.tracing.enabled,
        trace_sampling_ratio=settings.tracing.sampling_ratio,
        otlp_endpoint=settings.tracing.otlp_endpoint,
    )
    return KubernetesBackend(
        connect(settings.kubeconfig), cluster, settings.secret_key, state_dir=settings.state_dir
    )


async def resync_forever(reconciler: Reconciler) -> None:
    """The safety net: every deployment is looked at again even if an event was missed."""
    while True:
        await reconciler.resync()
        await asyncio.sleep(RESYNC_S)


async def serve(settings: Settings) -> None:
    state_dir = settings.state_dir.absolute()
    mongo = create_mongo_client(require_uri(settings), appname="sluice-provisioner")
    broker = create_broker(settings, client_name="sluice-provisioner")
    await broker.connect()
    backend = LocalBackend(
        state_dir / "instances",
        host=settings.host,
        state_dir=state_dir,
        secret_key=settings.secret_key,
        collector_max_bytes=settings.data_collector_max_bytes,
        tracing=settings.tracing,
        landlock=settings.landlock,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        db = database(mongo, settings)
        environments = EnvironmentBuilder(
            settings.envs_folder,
            landlock=settings.landlock,
            sources=[state_dir / "artifacts"],
        )
        publisher = EventPublisher(
            broker,
            source=SOURCE,
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )
        outbox = Outbox(db, publisher)
        await outbox.ensure_indexes()
        store = ProvisionerStore(db, outbox)
        await store.ensure_indexes()
        usage_prefix = settings.events_subject_prefix.rsplit(".", 1)[0] + ".usage"
        usage = UsagePublisher(broker, usage_prefix)
        routing = RoutingView()
        preparer = Preparer(
            environments, ArtifactStore(state_dir / "artifacts"), Catalogue.load(), backend
        )
        cluster = kubernetes_backend(settings)
        counts = AutoscaleCounts(db)
        await counts.load()
        activator = Activator(settings.host, settings.secret_key)
        await activator.start()
        local = LocalCompute(
            LocalServices(
                backend,
                preparer,
                store,
                routing,
                counts,
                activator,
                settings.scale_to_zero_idle_s,
                settings.scale_in_stabilization_s,
            ),
            usage.usage,
        )
        ctx = Context(
            store=store,
            backends={
                ComputeKind.managed: local,
                ComputeKind.kubernetes: KubernetesCompute(cluster, routing, counts),
            },
        )
        reconciler = Reconciler(ctx)

        async def autoscaled(endpoint: str, deployment: str) -> None:
            await counts.refresh(endpoint, deployment)
            await reconciler.touch(deployment_id(endpoint, deployment))

        activator.wake = reconciler.touch
        await reconciler.recover()
        subscribe_applied(
            broker,
            stream=settings.events_stream,
            prefix=settings.events_subject_prefix,
            view=routing,
            on_change=reconciler.routing_changed,
        )
        subscribe_autoscale(
            broker,
            stream=settings.events_stream,
            prefix=settings.events_subject_prefix,
            on_change=autoscaled,
        )
        subscribe_registry_events(
            broker,
            stream=settings.events_stream,
            prefix=settings.events_subject_prefix,
            wakeups=reconciler,
        )
        api = ProvisionerApi(store, backend, environments, cluster)
        server = GrpcServer(
            host=settings.host,
            port=settings.ports.provisioner,
            service_names=[SERVICE_NAME],
            register=lambda s: provisioner_pb2_grpc.add_ProvisionerServicer_to_server(api, s),
            admin_token=settings.admin_token,
            token_verifier=UserTokens(db).verify,  # users' tokens, by role
        )
        relay = OutboxRelay(outbox, publisher)
        tasks = [
            asyncio.create_task(relay.run()),
            asyncio.create_task(resync_forever(reconciler)),
        ]
        await broker.start()
        await server.start()
        start_exporter(settings)
        try:
            backend.warm_up((await environments.ensure(EnvironmentSpec())).python)
        except EnvironmentError_ as exc:  # each deployment will fail with this message, not us
            log.error("warm_up_failed", error=str(exc))
        signal = await wait_for_shutdown_signal()
        log.info("provisioner_stopping", signal=signal.name)
        await server.stop()
        await reconciler.shutdown()
        await activator.close()
        with contextlib.suppress(Exception):  # what is left is relayed at the next start
            await asyncio.wait_for(relay.drain(), timeout=3)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=3)
        await backend.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.stop(), timeout=3)
        await mongo.close()
