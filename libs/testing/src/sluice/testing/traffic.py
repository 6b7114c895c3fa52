"""Test helpers for the traffic controller's integration tests (fixtures: tests/traffic).

The session Envoy (`envoy_gateway`) connects to a fixed xDS port; each test
starts its own `python -m sluice.traffic` there, with the test's database and
stream, so a test sees only its own endpoints (the controller replaces the
whole configuration when it connects). Upstreams are small threaded HTTP
servers that answer with their own name - the inference server's behaviour
that matters to routing (status codes, delays, /ready) - and count what they
receive. Instance documents are written into MongoDB as the provisioner would,
followed by the event it would publish.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.components import python_service_spec
from sluice.common.events import EventPublisher
from sluice.common.events.catalogue import (
    DEPLOYMENT_DELETED,
    DEPLOYMENT_UPDATED,
    ENDPOINT_UPDATED,
    DeploymentChanged,
    EndpointChanged,
)
from sluice.common.health import GrpcHealthCheck
from sluice.common.mongo import Document
from sluice.common.pki import XDS_SERVER
from sluice.common.resources import (
    DEPLOYMENT_INSTANCES,
    ONLINE_DEPLOYMENTS,
    ONLINE_ENDPOINTS,
    AuthMode,
    DeploymentInstancesDoc,
    Instance,
    Meta,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
    ProvisioningState,
    RequestSettings,
    deployment_id,
    to_document,
)
from sluice.common.secretbox import SecretBox
from sluice.common.settings import EnvoySettings, Settings
from sluice.common.supervisor import RunningProcess, Supervisor, stop_process
from sluice.sdk.invoke import GatewayTarget, send
from sluice.testing.plugin import EnvoyGateway, service_env
from sluice.traffic.domain import cluster_name
from sluice.traffic.xds.server import GATEWAY_HEALTH

Headers = list[tuple[str, str]]


# ---- upstreams ---------------------------------------------------------------------------


@dataclass
class Behaviour:
    status: int = 200
    delay_s: float = 0.0
    crash: bool = False  # close the connection without an answer, as a crashed server does
    headers: tuple[tuple[str, str], ...] = ()  # added to the answer


class Upstream:
    """A model server stand-in: answers `{"deployment": name, ...}` and counts requests."""

    def __init__(self, name: str):
        self.name = name
        self.behaviour = Behaviour()
        self.scored = 0
        # The credentials each request arrived with: authorization and the gateway's hash of it.
        self.seen_authorization: list[str] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/ready":
                    self._send(200, b'{"ready": true}')
                    return
                with upstream._lock:
                    upstream.scored += 1
                    upstream.seen_authorization.append(
                        (self.headers.get("authorization") or "")
                        + (self.headers.get("x-sluice-key-sha256") or "")
                    )
                    upstream.bodies.append(body)
                behaviour = upstream.behaviour
                if behaviour.crash:
                    self.close_connection = True
                    return
                if behaviour.delay_s:
                    time.sleep(behaviour.delay_s)
                payload = {"deployment": upstream.name, "path": self.path, "body": body.decode()}
                self._send(behaviour.status, json.dumps(payload).encode(), behaviour.headers)

            def _send(
                self, status: int, data: bytes, headers: tuple[tuple[str, str], ...] = ()
            ) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- the controller and the gateway --------------------------------------------------------


@dataclass(frozen=True)
class GatewayPorts:
    http: int
    https: int


@dataclass
class Traffic:
    """A running traffic controller and how to reach the gateway it configures."""

    settings: Settings
    process: RunningProcess
    envoy: EnvoyGateway
    http: GatewayTarget
    https: GatewayTarget
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def host(self, endpoint: str) -> str:
        return f"{endpoint}.{self.settings.domain}"

    def score(
        self,
        endpoint: str,
        key: str | None = None,
        *,
        deployment: str | None = None,
        body: bytes = b'{"data": [1]}',
        tls: bool = False,
        path_based: bool = False,
        headers: Headers | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        sent: Headers = list(headers or [])
        if key is not None:
            sent.append(("Authorization", f"Bearer {key}"))
        if deployment is not None:
            sent.append(("azureml-model-deployment", deployment))
        host, path = self.host(endpoint), "/score"
        if path_based:
            host, path = self.settings.domain, f"/endpoints/{endpoint}/score"
        status, got, data = send(
            self.https if tls else self.http,
            host=host,
            path=path,
            body=body,
            headers=sent,
            timeout_s=30,
        )
        return status, {k.lower(): v for k, v in got}, data


def start_controller(
    settings: Settings,
    supervisor: Supervisor,
    envoy: EnvoyGateway,
    ports: GatewayPorts,
    extra_env: dict[str, str] | None = None,
) -> Traffic:
    settings = settings.model_copy(
        update={
            "ports": settings.ports.model_copy(update={"xds": envoy.xds_port}),
            "envoy": EnvoySettings(http_port=ports.http, https_port=ports.https),
        }
    )
    env = {
        **os.environ,
        **service_env(settings),
        "SLUICE_SERVICE_NAME": "traffic",
        "SLUICE_ENVOY__HTTP_PORT": str(ports.http),
        "SLUICE_ENVOY__HTTPS_PORT": str(ports.https),
        "SLUICE_TRAFFIC_DEBOUNCE_MS": "10",
        **(extra_env or {}),
    }
    spec = python_service_spec(
        name="traffic",
        module="sluice.traffic",
        host="127.0.0.1",
        port=envoy.xds_port,
        env=env,
        python=sys.executable,
    )
    process = supervisor.start(spec)
    # Started is not enough: the session Envoy must have opened its stream to *this* controller
    # (it re-connects within about a second of the previous one stopping).
    gateway = GrpcHealthCheck(
        f"127.0.0.1:{envoy.xds_port}",
        service=GATEWAY_HEALTH,
        pki=str(settings.pki_folder),
        server_name=XDS_SERVER,
    )
    eventually(gateway, bool, deadline_s=10)
    return Traffic(
        settings=settings,
        process=process,
        envoy=envoy,
        http=GatewayTarget("127.0.0.1", ports.http, tls=False),
        https=GatewayTarget(
            "127.0.0.1", ports.https, tls=True, ca_file=settings.state_dir / "tls" / "ca.crt"
        ),
        extra_env=dict(extra_env or {}),
    )


def healthy_hosts(traffic: Traffic, endpoint: str, deployment: str) -> int:
    """How many hosts of the deployment's cluster Envoy counts as healthy (admin /clusters).

    Envoy routes to a new host once its first active health check passed, which on a loaded
    machine can come after the routes: tests that count requests wait on this without sending
    any (a request that found no healthy host is still a request the endpoint saw).
    """
    return len(healthy_addresses(traffic, cluster_name(endpoint, deployment)))


def healthy_addresses(traffic: Traffic, cluster: str) -> list[str]:
    """The host:port of each host of `cluster` that Envoy counts as healthy, sorted."""
    url = f"{traffic.envoy.admin_url}/clusters"
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - Envoy's loopback admin
        lines = reply.read().decode().splitlines()
    prefix, healthy = f"{cluster}::", "::health_flags::healthy"
    return sorted(
        line.split("::")[1] for line in lines if line.startswith(prefix) and line.endswith(healthy)
    )


def restart(traffic: Traffic, supervisor: Supervisor) -> Traffic:
    stop_process(traffic.process)
    return start_controller(
        traffic.settings,
        supervisor,
        traffic.envoy,
        GatewayPorts(http=traffic.http.port, https=traffic.https.port),
        traffic.extra_env,
    )


# ---- state, written as the registry and the provisioner would -----------------------------


class World:
    """Writes endpoint and deployment documents and publishes the matching events."""

    def __init__(self, db: AsyncDatabase[Document], settings: Settings, broker: NatsBroker):
        assert settings.secret_key
        self._db = db
        self._box = SecretBox(settings.secret_key)
        self._events = EventPublisher(
            broker,
            source="tests",
            subject_prefix=settings.events_subject_prefix,
            stream=settings.events_stream,
        )

    async def endpoint(
        self,
        name: str,
        *,
        traffic: dict[str, int] | None = None,
        mirror: dict[str, int] | None = None,
        keys: tuple[str, str] = ("primary-key-1", "secondary-key-1"),
        auth_mode: AuthMode = AuthMode.key,
        version: int = 1,
    ) -> None:
        doc = OnlineEndpointDoc(
            spec=OnlineEndpointSpec(
                name=name,
                auth_mode=auth_mode,
                traffic=traffic or {},
                mirror_traffic=mirror or {},
            ),
            meta=Meta(version=version, provisioning_state=ProvisioningState.succeeded),
            keys={"primary": self._box.encrypt(keys[0]), "secondary": self._box.encrypt(keys[1])},
        )
        await self._db[ONLINE_ENDPOINTS].replace_one(
            {"_id": name}, to_document(doc, name), upsert=True
        )
        data = EndpointChanged(name=name, version=version)
        await self._events.publish(ENDPOINT_UPDATED, data, subject=name, actor="t")

    async def deployment(
        self,
        endpoint: str,
        name: str,
        instances: list[str],
        *,
        timeout_ms: int = 5000,
        concurrency: int = 1,
    ) -> None:
        doc = OnlineDeploymentDoc(
            spec=OnlineDeploymentSpec(
                name=name,
                endpoint_name=endpoint,
                request_settings=RequestSettings(
                    request_timeout_ms=timeout_ms,
                    max_concurrent_requests_per_instance=concurrency,
                ),
            ),
            meta=Meta(provisioning_state=ProvisioningState.succeeded),
        )
        running = DeploymentInstancesDoc(
            instances=tuple(
                Instance(id=f"{name}-{i}", address=a, ready=True) for i, a in enumerate(instances)
            )
        )
        _id = deployment_id(endpoint, name)
        await self._db[ONLINE_DEPLOYMENTS].replace_one(
            {"_id": _id}, to_document(doc, _id), upsert=True
        )
        await self._db[DEPLOYMENT_INSTANCES].replace_one(
            {"_id": _id}, to_document(running, _id), upsert=True
        )
        data = DeploymentChanged(name=name, endpoint=endpoint, version=1)
        await self._events.publish(DEPLOYMENT_UPDATED, data, subject=_id, actor="t")

    async def delete_deployment(self, endpoint: str, name: str) -> None:
        await self._db[ONLINE_DEPLOYMENTS].delete_one({"_id": deployment_id(endpoint, name)})
        data = DeploymentChanged(name=name, endpoint=endpoint, version=1)
        await self._events.publish(
            DEPLOYMENT_DELETED, data, subject=f"{endpoint}/{name}", actor="t"
        )

    async def raw_deployment_update(self, endpoint: str, name: str, fields: dict[str, Any]) -> None:
        """Set fields the registry would never write (to provoke a NACK)."""
        await self._db[ONLINE_DEPLOYMENTS].update_one(
            {"_id": deployment_id(endpoint, name)}, {"$set": fields}
        )
        data = DeploymentChanged(name=name, endpoint=endpoint, version=2)
        await self._events.publish(
            DEPLOYMENT_UPDATED, data, subject=f"{endpoint}/{name}", actor="t"
        )


T = TypeVar("T")


def eventually(probe: Callable[[], T], ok: Callable[[T], bool], *, deadline_s: float = 15) -> T:
    """Call `probe` until `ok(result)`, or fail at the deadline with the last result.

    A probe that raises OSError (the listener is not up yet) counts as not ok.
    """
    end = time.monotonic() + deadline_s
    last: object = None
    while True:
        try:
            result = probe()
        except OSError as exc:
            last = exc
        else:
            if ok(result):
                return result
            last = result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline_s}s; last: {last!r}")
        time.sleep(0.02)
