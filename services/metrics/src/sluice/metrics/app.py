"""Composition root of the metrics & cost aggregator: build every object, serve, close."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import REGISTRY

from sluice.common.access import UserTokens
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
from sluice.common.pki import ALS_SERVER, PlatformPki
from sluice.common.prometheus import start_exporter
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.settings import Settings
from sluice.metrics import forward
from sluice.metrics.alerts import AlertEvaluator, AlertRules
from sluice.metrics.api import AlertAdmin, MetricsApi, MetricsQueries
from sluice.metrics.autoscale import Autoscaler, AutoscaleStore
from sluice.metrics.autoscale_api import AutoscaleApi
from sluice.metrics.buckets import Buckets
from sluice.metrics.cache import PointCache
from sluice.metrics.envoy_stats import SERVICE_NAME as STATS_SERVICE
from sluice.metrics.envoy_stats import ClusterOwners, EnvoyStats, StatsSinkReceiver
from sluice.metrics.flusher import Flusher
from sluice.metrics.live import LiveView
from sluice.metrics.requestlog import SERVICE_NAME as REQUEST_LOGS_SERVICE
from sluice.metrics.requestlog import RecentRequests, RequestLogsApi
from sluice.metrics.settings import MetricsSettings
from sluice.metrics.store import MetricsStore
from sluice.metrics.usage import subscribe_usage, usage_subject
from sluice.v1 import autoscale_pb2, autoscale_pb2_grpc, metrics_pb2_grpc, requestlogs_pb2_grpc

log = get_logger(__name__)
SERVICE_NAME = "sluice.v1.Metrics"
AUTOSCALE_SERVICE = autoscale_pb2.DESCRIPTOR.services_by_name["Autoscale"].full_name


def snapshot_prefix(events_subject_prefix: str) -> str:
    """`sluice.events` -> `sluice.metrics` (same root as events and usage samples)."""
    return events_subject_prefix.rsplit(".", 1)[0] + ".metrics"


async def every(interval_s: float, *jobs: Any) -> None:
    """Run each async job every `interval_s`; a failing job is logged and retried."""
    while True:
        await asyncio.sleep(interval_s)
        for job in jobs:
            try:
                await job()
            except Exception as exc:
                log.warning(
                    "periodic_job_failed", job=getattr(job, "__name__", "?"), error=str(exc)
                )


async def warm_cache(queries: MetricsQueries) -> None:
    """The last day's points into the cache, in the background, once at start."""
    started = time.monotonic()
    try:
        endpoints = await queries.warm()
    except Exception as exc:  # queries read MongoDB themselves: only slower
        log.warning("point_cache_warm_up_failed", error=str(exc))
        return
    log.info("point_cache_warmed", endpoints=endpoints, seconds=time.monotonic() - started)


async def serve(settings: Settings, metrics: MetricsSettings) -> None:
    mongo = create_mongo_client(require_uri(settings), appname="sluice-metrics")
    db = database(mongo, settings)
    store = MetricsStore(db)
    await store.ensure_indexes(metrics.retention_days * 86400)
    buckets = Buckets(metrics.bucket_s)
    stats = forward.IngestStats()
    broker = create_broker(settings, client_name="sluice-metrics")
    subscribe_usage(broker, usage_subject(settings.events_subject_prefix), buckets)
    await broker.start()
    await ensure_events_stream(
        broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
    )
    publisher = EventPublisher(
        broker,
        source="sluice/metrics",
        subject_prefix=settings.events_subject_prefix,
        stream=settings.events_stream,
    )
    outbox = Outbox(db, publisher)
    await outbox.ensure_indexes()
    autoscale_store = AutoscaleStore(db, outbox)
    await autoscale_store.ensure_indexes()
    autoscaler = Autoscaler(autoscale_store, store, metrics.bucket_s)
    cache = PointCache()
    flusher = Flusher(
        buckets,
        store,
        interval_s=metrics.flush_interval_s,
        max_pending=metrics.max_pending_buckets,
        cache=cache,
    )
    recent = RecentRequests()
    queries = MetricsQueries(db, store, metrics.currency, metrics.bucket_s, cache)
    rules = AlertRules(db)
    api = MetricsApi(queries, AlertAdmin(rules, queries, metrics.bucket_s))
    envoys = EnvoyStats(buckets, ClusterOwners(db))
    live = LiveView(store, metrics.bucket_s, stats, flusher, envoys)
    REGISTRY.register(live)
    evaluator = AlertEvaluator(rules, store, publisher, metrics.bucket_s)
    prefix = snapshot_prefix(settings.events_subject_prefix)

    async def snapshots() -> None:
        await live.refresh()
        await live.publish(broker, prefix)

    def register(server: object) -> None:
        metrics_pb2_grpc.add_MetricsServicer_to_server(api, server)
        autoscale_pb2_grpc.add_AutoscaleServicer_to_server(
            AutoscaleApi(autoscale_store, metrics.bucket_s), server
        )
        requestlogs_pb2_grpc.add_RequestLogsServicer_to_server(RequestLogsApi(recent), server)

    server = GrpcServer(
        host=settings.host,
        port=settings.ports.metrics,
        service_names=[SERVICE_NAME, AUTOSCALE_SERVICE, REQUEST_LOGS_SERVICE],
        register=register,
        admin_token=settings.admin_token,
        token_verifier=UserTokens(db).verify,  # users' tokens, by role
    )

    # Envoy cannot send the admin token: its stats stream (gRPC) and access log (Fluentd
    # Forward protocol) have ports of their own with mutual TLS (the platform CA), so no
    # other process can feed forged requests or connections into the metrics, costs and
    # alerts.
    def register_envoy(server: Any) -> None:
        server.add_generic_rpc_handlers((StatsSinkReceiver(envoys).handler(),))

    identity = PlatformPki(settings.pki_folder.absolute()).server(ALS_SERVER)
    als_server = GrpcServer(
        host=settings.host,
        port=settings.ports.als,
        service_names=[STATS_SERVICE],
        register=register_envoy,
        tls=identity,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await als_server.start()
        access_log = await forward.serve(
            settings.host,
            settings.ports.access_log,
            buckets,
            stats,
            recent,
            tls=forward.server_tls(identity),
        )
        await server.start()
        start_exporter(settings)
        tasks.append(asyncio.create_task(flusher.run(), name="flusher"))
        tasks.append(
            asyncio.create_task(
                every(metrics.snapshot_interval_s, snapshots, evaluator.tick, autoscaler.tick),
                name="live",
            )
        )
        tasks.append(asyncio.create_task(OutboxRelay(outbox, publisher).run(), name="relay"))
        tasks.append(asyncio.create_task(warm_cache(queries), name="warm-cache"))
        tasks.append(
            asyncio.create_task(
                every(metrics.envoy_stats_interval_s, envoys.sample), name="envoy-stats"
            )
        )
        signal = await wait_for_shutdown_signal()
        log.info("metrics_stopping", signal=signal.name)
        # The API's calls get a second to finish; Envoys' access-log streams never end by
        # themselves (a grace period would only be waited out).
        await asyncio.gather(server.stop(grace=1.0), als_server.stop(grace=0.1))
        access_log.close()
        for task in tasks:
            task.cancel()
        await flusher.close()
    finally:
        await broker.stop()
        await mongo.close()
