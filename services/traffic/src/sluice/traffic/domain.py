"""What the gateway must do, as plain values: endpoints, deployments, credentials, limits.

The store turns MongoDB documents into these frozen values; `xds.resources`
turns them into Envoy resources. Everything here is pure: equal inputs give
equal outputs, which is what lets the controller cache per-endpoint resources
and version snapshots by content.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# Azure's routing header: pins a request to one deployment, bypassing the split.
DEPLOYMENT_HEADER = "azureml-model-deployment"
# Where an endpoint answers besides its own host name.
PATH_PREFIX = "/endpoints/"
# The Open Inference Protocol's gRPC service: its methods' paths start with this.
GRPC_SERVICE_PREFIX = "/inference.GRPCInferenceService/"


@dataclass(frozen=True)
class Upstream:
    """One ready instance of a deployment: an inference server at host:port (an IP literal)."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> Upstream:
        """`127.0.0.1:5001` or `[::1]:5001`; raises ValueError on anything else."""
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"instance address {address!r} is not host:port")
        return cls(host=host.strip("[]"), port=int(port))

    @property
    def address(self) -> str:
        """`host:port`, the form instances are recorded in (`[host]:port` for IPv6)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    name: str
    version: int
    request_timeout_ms: int
    max_concurrent_requests_per_instance: int
    instances: tuple[Upstream, ...]  # ready ones only, sorted
    # Sent to its instances, which refuse requests without it (sluice.common.gateway_auth).
    gateway_secret: str = field(default="", repr=False)

    @property
    def cluster(self) -> str:
        return cluster_name(self.endpoint, self.name)

    @property
    def max_in_flight(self) -> int:
        """Azure's fail-fast rule: more than 2 x concurrency x instances pending is a 429."""
        return max(1, 2 * self.max_concurrent_requests_per_instance * len(self.instances))


@dataclass(frozen=True)
class KeyAuth:
    """Primary and secondary key; `repr=False` keeps them out of every log line."""

    keys: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True)
class TokenAuth:
    audience: str


Auth = KeyAuth | TokenAuth


@dataclass(frozen=True)
class Share:
    deployment: str
    percent: int


@dataclass(frozen=True)
class Endpoint:
    """One online endpoint as the gateway serves it."""

    name: str
    version: int
    auth: Auth
    traffic: tuple[Share, ...]  # live shares above 0%, deployments that exist, by name
    mirror: Share | None  # at most one deployment, at most 50%
    deployments: tuple[Deployment, ...]  # by name

    @property
    def host(self) -> str:
        """The host key: Envoy matches virtual host domains without regard to case."""
        return self.name.lower()

    def deployment(self, name: str) -> Deployment | None:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        return None

    def split_timeout_ms(self) -> int:
        """The timeout of the weighted route: one route carries one timeout, so the split uses
        the longest of its deployments' (each inference server enforces its own exactly)."""
        timeouts = [
            d.request_timeout_ms for s in self.traffic if (d := self.deployment(s.deployment))
        ]
        return max(timeouts, default=0)


@dataclass(frozen=True)
class Owner:
    """The deployment an Envoy cluster serves (its `filter_metadata["sluice"]`)."""

    endpoint: str
    deployment: str


def cluster_name(endpoint: str, deployment: str) -> str:
    # Names are [-a-zA-Z0-9] only, so a double underscore cannot be ambiguous.
    return f"{endpoint}__{deployment}"


def live_shares(traffic: dict[str, int], existing: set[str]) -> tuple[Share, ...]:
    """The shares Envoy splits by: above 0% and naming a deployment that exists."""
    return tuple(
        Share(name, pct) for name, pct in sorted(traffic.items()) if pct > 0 and name in existing
    )


def mirror_share(
    mirror: dict[str, int], existing: set[str], live: tuple[Share, ...]
) -> Share | None:
    """The mirror rule the registry enforces, re-checked: one deployment, 1-50%, not also live."""
    live_names = {s.deployment for s in live}
    candidates = [
        Share(name, min(pct, 50))
        for name, pct in sorted(mirror.items())
        if pct > 0 and name in existing and name not in live_names
    ]
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class HostConflict:
    endpoint: str
    taken_by: str


def without_host_conflicts(
    endpoints: list[Endpoint],
) -> tuple[list[Endpoint], list[HostConflict]]:
    """Drop endpoints whose host name differs from an earlier one only in case.

    Envoy rejects a route table with two equal domains, which would take every
    endpoint down; the first by name keeps the host, the others are reported.
    """
    kept: dict[str, Endpoint] = {}
    conflicts = []
    for ep in sorted(endpoints, key=lambda e: e.name):
        if ep.host in kept:
            conflicts.append(HostConflict(endpoint=ep.name, taken_by=kept[ep.host].name))
        else:
            kept[ep.host] = ep
    return list(kept.values()), conflicts


@dataclass(frozen=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True)
class TlsMaterial:
    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)


@dataclass(frozen=True)
class Limits:
    """What one client request may cost before any instance sees it.

    The gateway reads each request whole before anything answers it (so a slow
    sender holds no instance's slot, and an early 401 does not break clients).
    Azure documents no request size limit; 16 MiB bounds what one request may
    hold in the gateway's memory (SLUICE_TRAFFIC_MAX_REQUEST_BYTES raises it,
    up to the inference server's own 100 MiB).
    """

    max_request_bytes: int = 16 * 1024 * 1024
    headers_timeout_s: float = 10.0  # the request line and headers, else the connection closes
    receive_timeout_s: float = 30.0  # the whole request, body included, else 408


@dataclass(frozen=True)
class StaticFile:
    """One file the management listener serves as it is (the portal's pages)."""

    path: str  # the URL path, e.g. /portal/app.js
    content_type: str
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Management:
    """The management listener: the gRPC services as REST (Envoy's gRPC-JSON transcoder)
    and as plain gRPC, their OpenAPI document, the portal's files, and `/gateway/` (the
    scoring listener, so the portal's Test tab stays on one origin)."""

    listen: Listen
    # gRPC service ("sluice.v1.Registry") -> host:port of the process that serves it.
    services: tuple[tuple[str, str], ...]
    descriptor_set: bytes = field(repr=False)  # FileDescriptorSet with google.api.http rules
    openapi: bytes = field(repr=False)
    files: tuple[StaticFile, ...] = ()
    gateway: Listen | None = None  # the plain-HTTP scoring listener, when there is one


@dataclass(frozen=True)
class BatchJobs:
    """Where the gateway sends a batch endpoint's scoring URI, `POST /endpoints/<e>/jobs`
    (and `<e>.<domain>/jobs`): the batch service's gRPC server, through Envoy's gRPC-JSON
    transcoder with the protos' descriptor set (xds/batch_jobs.py)."""

    address: str  # host:port
    descriptor_set: bytes = field(repr=False)


@dataclass(frozen=True)
class Gateway:
    """Gateway-wide settings: listeners, certificate, token keys, access-log sink."""

    domain: str
    https: Listen
    http: Listen | None  # None: plain HTTP turned off
    tls: TlsMaterial
    jwks: str  # the registry's public keys (JSON); a key nobody holds until it is known
    access_log: bool = False  # Envoy's access log to the metrics service (settings.py)
    access_log_buffer_bytes: int = 256 * 1024  # Envoy's batch of records to it
    limits: Limits = Limits()
    management: Management | None = None  # None: no management listener
    batch_jobs: BatchJobs | None = None  # None: batch endpoints' scoring URIs answer 404
