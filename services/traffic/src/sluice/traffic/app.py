"""Composition root of the traffic controller: build every object, serve ADS, close."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

from envoy.service.discovery.v3 import ads_pb2_grpc

from sluice.common.events import EventPublisher, create_broker, ensure_events_stream
from sluice.common.grpc_server import GrpcServer
from sluice.common.log import get_logger
from sluice.common.mongo import create_mongo_client, database, require_uri
from sluice.common.pki import XDS_SERVER, PlatformPki
from sluice.common.prometheus import start_exporter
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.secretbox import SecretBox
from sluice.common.settings import Settings
from sluice.traffic import openapi, portal
from sluice.traffic.controller import Controller, Timing
from sluice.traffic.domain import BatchJobs, Gateway, Limits, Listen, Management
from sluice.traffic.events import NatsOutcomes, subscribe_routing_events
from sluice.traffic.jwks import StoredJwks
from sluice.traffic.settings import TrafficSettings
from sluice.traffic.store import TrafficStore
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds.server import GATEWAY_HEALTH, SERVICE_NAME, AdsServer

log = get_logger(__name__)


def certificate_files(settings: Settings, traffic: TrafficSettings) -> tuple[Path, Path]:
    if traffic.tls_cert_file and traffic.tls_key_file:
        return traffic.tls_cert_file, traffic.tls_key_file
    return ensure_local_certificate(settings.state_dir.absolute() / "tls", settings.domain)


def access_log_on(settings: Settings, traffic: TrafficSettings) -> bool:
    """Whether Envoy logs requests to the metrics service (its bootstrap names where)."""
    if traffic.access_log is not None:
        return traffic.access_log
    installed = importlib.util.find_spec("sluice.metrics") is not None
    return bool(settings.ports.access_log) and installed


# Which process serves each gRPC service the management listener exposes.
SERVICES = {
    "sluice.v1.Registry": "registry",
    "sluice.v1.Workspace": "registry",
    "sluice.v1.Assets": "registry",
    "sluice.v1.Access": "registry",
    "sluice.v1.Provisioner": "provisioner",
    "sluice.v1.Batch": "batch",
    "sluice.v1.Metrics": "metrics",
    "sluice.v1.Autoscale": "metrics",
}


_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - a lookup


def _address(settings: Settings, component: str) -> str | None:
    """Where `component`'s gRPC server listens: its configured address, else its port here."""
    address = getattr(settings, f"{component}_address", None)
    port = getattr(settings.ports, component)
    return address or (f"{settings.host}:{port}" if port else None)


def batch_jobs(settings: Settings) -> BatchJobs | None:
    """The batch service behind batch endpoints' scoring URIs, when its address is known."""
    address = _address(settings, "batch")
    return BatchJobs(address, openapi.descriptor_set()) if address else None


def management(settings: Settings, gateway: Listen | None, host: str) -> Management | None:
    """The management listener (REST, OpenAPI, portal), or None when no port is set.

    A service is reachable when its address is configured or its port is known; the
    portal shows the others as not running.
    """
    if settings.envoy.management_port is None:
        return None
    services = []
    for service, component in SERVICES.items():
        address = _address(settings, component)
        if address:
            services.append((service, address))
    data = openapi.descriptor_set()
    return Management(
        listen=Listen(host, settings.envoy.management_port),
        services=tuple(services),
        descriptor_set=data,
        openapi=json.dumps(openapi.document(data), indent=1).encode(),
        files=portal.files(),
        # Envoy calls its own plain-HTTP scoring listener: on loopback when it binds all.
        gateway=Listen(_WILDCARDS.get(gateway.host, gateway.host), gateway.port)
        if gateway
        else None,
    )


class GatewaySource:
    """The gateway-wide settings; re-reads the certificate files each time (rotation)."""

    def __init__(self, settings: Settings, traffic: TrafficSettings):
        self._settings = settings
        self._traffic = traffic
        self._cert, self._key = certificate_files(settings, traffic)
        host = traffic.listen_host or settings.host
        self._https = Listen(host, settings.envoy.https_port)
        self._http = Listen(host, settings.envoy.http_port) if settings.envoy.http_enabled else None
        self._access_log = access_log_on(settings, traffic)
        self._access_log_buffer_bytes = traffic.access_log_buffer_bytes
        self._management = management(settings, self._http, host)
        self._batch_jobs = batch_jobs(settings)
        self._limits = Limits(
            max_request_bytes=traffic.max_request_bytes,
            headers_timeout_s=traffic.request_headers_timeout_s,
            receive_timeout_s=traffic.request_receive_timeout_s,
        )

    def __call__(self, jwks: str) -> Gateway:
        if not self._traffic.tls_cert_file:  # the local certificate: renewed when due
            self._cert, self._key = certificate_files(self._settings, self._traffic)
        return Gateway(
            domain=self._settings.domain,
            https=self._https,
            http=self._http,
            tls=load_material(self._cert, self._key),
            jwks=jwks,
            access_log=self._access_log,
            access_log_buffer_bytes=self._access_log_buffer_bytes,
            limits=self._limits,
            management=self._management,
            batch_jobs=self._batch_jobs,
        )


async def serve(settings: Settings, traffic: TrafficSettings) -> None:
    if not settings.secret_key:
        raise RuntimeError("SLUICE_SECRET_KEY must be set (`sluice up` sets it)")
    mongo = create_mongo_client(require_uri(settings), appname="sluice-traffic")
    broker = create_broker(settings, client_name="sluice-traffic")
    await broker.connect()
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        publisher = EventPublisher(
            broker,
            source="sluice/traffic",
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )
        # `server` exists before the first Envoy can connect (it is started below).
        ads = AdsServer(on_connected=lambda up: server.set_serving(GATEWAY_HEALTH, up))
        db = database(mongo, settings)
        store = TrafficStore(db, SecretBox(settings.secret_key))
        controller = Controller(
            store=store,
            server=ads,
            outcomes=NatsOutcomes(publisher, record=store.record_applied),
            jwks=StoredJwks(db),
            gateway=GatewaySource(settings, traffic),
            timing=Timing(
                debounce_s=traffic.debounce_ms / 1000, resync_s=traffic.resync_interval_s
            ),
        )
        subscribe_routing_events(
            broker,
            stream=settings.events_stream,
            prefix=settings.events_subject_prefix,
            sink=controller,
        )
        await broker.start()
        # The first snapshot exists before Envoy can connect: it never sees an empty config.
        await controller.sync_once()
        # Envoy cannot send the admin token: mutual TLS with the platform CA instead (the
        # stream carries every key), and the node id must be the client certificate's name.
        server = GrpcServer(
            host=settings.host,
            port=settings.ports.xds,
            service_names=[SERVICE_NAME],
            register=lambda s: ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
                ads, s
            ),
            tls=PlatformPki(settings.pki_folder.absolute()).server(XDS_SERVER),
        )
        await server.start()
        start_exporter(settings)
        reconciler = asyncio.create_task(controller.run())
        signal = await wait_for_shutdown_signal()
        log.info("traffic_stopping", signal=signal.name)
        reconciler.cancel()
        # Its only calls are Envoys' ADS streams, which never end by themselves: a grace
        # period would only be waited out (they reconnect to the next controller).
        await server.stop(grace=0.1)
    finally:
        await broker.stop()
        await mongo.close()
