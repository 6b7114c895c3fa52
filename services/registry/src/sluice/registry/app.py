"""Composition root of the registry: build every object, serve, close."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from sluice.common.access import ACCESS_SERVICE, UserTokens
from sluice.common.artifacts import REST_UPLOAD_MAX_BYTES, ArtifactStore
from sluice.common.curated import CuratedCatalogue
from sluice.common.events import (
    EventPublisher,
    Outbox,
    OutboxRelay,
    create_broker,
    ensure_events_stream,
)
from sluice.common.events.catalogue import REGISTRY
from sluice.common.grpc_server import GrpcServer
from sluice.common.log import get_logger
from sluice.common.mongo import create_mongo_client, database, require_uri
from sluice.common.prometheus import start_exporter
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.common.secretbox import SecretBox
from sluice.common.settings import Settings
from sluice.registry import artifact_gc
from sluice.registry.access import TokenStore
from sluice.registry.access_api import AccessApi
from sluice.registry.api import RegistryApi
from sluice.registry.assets import AssetService
from sluice.registry.assets_api import AssetsApi
from sluice.registry.credentials import TokenIssuer
from sluice.registry.service import RegistryService
from sluice.registry.store import RegistryStore
from sluice.registry.workspace_api import WorkspaceApi
from sluice.v1 import (
    access_pb2_grpc,
    assets_pb2,
    assets_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)

log = get_logger(__name__)
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
ASSETS_SERVICE_NAME = assets_pb2.DESCRIPTOR.services_by_name["Assets"].full_name
WORKSPACE_SERVICE_NAME = workspace_pb2.DESCRIPTOR.services_by_name["Workspace"].full_name


def scoring_base(settings: Settings) -> str:
    """The address an endpoint's `scoring_uri` and `swagger_uri` start with.

    A real domain: `https://{name}.<domain>[:port]`, host-based like Azure's. The local
    platform's `*.localhost` domain: `https://localhost[:port]/endpoints/{name}` instead,
    because only some resolvers (systemd-resolved, curl's own) map `<x>.localhost` to
    loopback, while `localhost` resolves for every client; the gateway serves both.
    """
    port = settings.envoy.https_port
    suffix = "" if port == 443 else f":{port}"
    domain = settings.domain.lower().rstrip(".")
    if domain == "localhost" or domain.endswith(".localhost"):
        return f"https://localhost{suffix}/endpoints/{{name}}"
    return f"https://{{name}}.{settings.domain}{suffix}"


def artifact_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.state_dir.absolute() / "artifacts")


async def load_token_issuer(store: RegistryStore, secrets: SecretBox) -> TokenIssuer:
    """The signing key is created once, kept encrypted in MongoDB and shared by replicas."""
    if await store.signing_key() is None:
        await store.add_signing_key(secrets.encrypt(TokenIssuer.generate_private_key_pem()))
    stored = await store.signing_key()
    assert stored is not None
    return TokenIssuer(secrets.decrypt(stored))


def register(
    server: grpc.aio.Server,
    api: RegistryApi,
    workspace: WorkspaceApi,
    assets: AssetsApi,
    access: AccessApi,
) -> None:
    registry_pb2_grpc.add_RegistryServicer_to_server(api, server)
    workspace_pb2_grpc.add_WorkspaceServicer_to_server(workspace, server)
    assets_pb2_grpc.add_AssetsServicer_to_server(assets, server)
    access_pb2_grpc.add_AccessServicer_to_server(access, server)


async def serve(settings: Settings) -> None:
    if not settings.admin_token or not settings.secret_key:
        raise RuntimeError(
            "SLUICE_ADMIN_TOKEN and SLUICE_SECRET_KEY must be set (`sluice up` sets both)"
        )
    mongo = create_mongo_client(require_uri(settings), appname="sluice-registry")
    broker = create_broker(settings, client_name="sluice-registry")
    await broker.connect()
    try:
        await ensure_events_stream(
            broker, stream=settings.events_stream, subject_prefix=settings.events_subject_prefix
        )
        secrets = SecretBox(settings.secret_key)
        db = database(mongo, settings)
        publisher = EventPublisher(
            broker,
            source=REGISTRY,
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )
        outbox = Outbox(db, publisher)
        await outbox.ensure_indexes()
        store = RegistryStore(db, outbox)
        await store.ensure_indexes()
        tokens = await load_token_issuer(store, secrets)
        await store.publish_jwks(tokens.jwks)
        artifacts = artifact_store(settings)
        assets = AssetService(store, artifacts, CuratedCatalogue.load())
        service = RegistryService(store, secrets, tokens, artifacts, assets)
        relay = asyncio.create_task(OutboxRelay(outbox, publisher).run())
        collector = asyncio.create_task(
            artifact_gc.run(
                db,
                artifacts,
                interval_s=settings.artifact_gc_interval_s,
                grace_s=settings.artifact_gc_grace_s,
            )
        )
        api = RegistryApi(service, artifacts, scoring_base(settings))
        workspace = WorkspaceApi(service, assets, artifacts, scoring_base(settings))
        tokens_store = TokenStore(db)  # per-user tokens and roles (access.py)
        server = GrpcServer(
            host=settings.host,
            port=settings.ports.registry,
            service_names=[
                SERVICE_NAME,
                WORKSPACE_SERVICE_NAME,
                ASSETS_SERVICE_NAME,
                ACCESS_SERVICE,
            ],
            register=lambda s: register(
                s, api, workspace, AssetsApi(assets), AccessApi(tokens_store)
            ),
            admin_token=settings.admin_token,
            token_verifier=UserTokens(db).verify,
            # PUT /artifacts/{name} arrives as one message: the archive and a few fields.
            max_message_bytes=REST_UPLOAD_MAX_BYTES + 64 * 1024,
        )
        await server.start()
        start_exporter(settings)
        signal = await wait_for_shutdown_signal()
        log.info("registry_stopping", signal=signal.name)
        await server.stop()
        relay.cancel()
        collector.cancel()
        with contextlib.suppress(Exception):  # what is left is relayed at the next start
            await asyncio.wait_for(OutboxRelay(outbox, publisher).drain(), timeout=3)
    finally:
        await broker.stop()
        await mongo.close()
