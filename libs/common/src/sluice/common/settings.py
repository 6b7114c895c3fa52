"""Settings: every port, URI and secret in one place, read from `SLUICE_*` variables.

Nested groups use a double underscore: `SLUICE_ENVOY__HTTP_PORT=8080`.
A port of 0 means "pick a free loopback port at start-up".
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    """Where the platform keeps its state when `SLUICE_STATE_DIR` is unset.

    One per user, independent of the current folder, so `sluice` finds the platform it
    started from anywhere (Azure's CLI has no notion of a project folder either):
    `$XDG_STATE_HOME/sluice`, else `~/.local/state/sluice`. Run as root (without
    `$XDG_STATE_HOME`), the platform runs each deployment as a user of its own, which must
    reach its workspace under the state folder; root's home is private, so root's
    platform lives in `/var/lib/sluice`, where a system service keeps its state.
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if Path(xdg).is_absolute():
        return Path(xdg) / "sluice"
    if os.geteuid() == 0:
        return Path("/var/lib/sluice")
    return Path.home() / ".local" / "state" / "sluice"


class EnvoySettings(BaseModel):
    http_port: int = 8080
    https_port: int = 8443
    admin_port: int = 0
    http_enabled: bool = True
    # The management listener (REST API, OpenAPI, portal); None = none. `sluice up` sets
    # it (8090 when free); harnesses that only need scoring leave it out.
    management_port: int | None = None


class ServicePorts(BaseModel):
    """gRPC ports of the control-plane services (0 = free port)."""

    registry: int = 50051
    provisioner: int = 0
    xds: int = 0
    batch: int = 0
    metrics: int = 0
    # The metrics service's ports for Envoy (mutual TLS, Envoy's certificate only): gRPC for
    # its stats sink (named for the gRPC access log it once carried), and the access log
    # (Fluentd Forward protocol, sluice.common.access_log).
    als: int = 0
    access_log: int = 0


MONGO_USER = "sluice"  # the platform's MongoDB user, SecantusDB's (mongo_auth) or MongoDB's


class TracingSettings(BaseModel):
    """`SLUICE_TRACING__*`: whether spans are recorded, which share, and where they go."""

    enabled: bool = False
    sampling_ratio: float = 0.01  # of traces started here; a sampled parent is always followed
    otlp_endpoint: str | None = None  # e.g. http://localhost:4317 (OTLP/gRPC)
    local_files: bool = True  # JSON lines under <state>/traces

    @field_validator("sampling_ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"sampling_ratio must be between 0.0 and 1.0, got {value}")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", env_nested_delimiter="__", extra="ignore"
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    host: str = "127.0.0.1"
    # Scoring hosts are <endpoint>.<domain>; *.localhost resolves to loopback everywhere.
    domain: str = "sluice.localhost"

    mongodb_uri: str | None = Field(
        default=None, description="A real MongoDB; unset = run the embedded SecantusDB"
    )
    mongodb_database: str = "sluice"
    # compose and Kubernetes: the password of MongoDB's `sluice` user, joined to mongodb_uri.
    # In the environment (a Secret's value), not a file: deployment code running as the
    # same uid (batch workers, local instances) can read files, not a non-dumpable
    # process's environment (sluice.common.runtime), and children get none of it.
    mongodb_password: str | None = None
    mongodb_port: int = 0

    nats_url: str | None = Field(default=None, description="A running NATS; unset = run one")
    # The local platform's NATS users (sluice.common.nats_auth): the batch service adds a
    # user per job there for its workers (deployment code); unset = workers use nats_url.
    nats_auth_dir: Path | None = None
    # compose and Kubernetes: this service's NATS user and the file (a secret) holding its
    # password, added to nats_url; for the batch service, the seed with which it answers
    # nats-server's auth callout for its jobs' workers (sluice.common.nats_callout).
    nats_user: str | None = None
    nats_password_file: Path | None = None
    nats_callout_seed_file: Path | None = None
    # compose and Kubernetes: deployment code (batch workers, the local backend's instances)
    # shares its service's uid, so each process starts in a Landlock sandbox that reaches
    # only its own files (sluice.common.confine); a kernel without Landlock fails it. Off by
    # default: `sluice up` as root gives each deployment a user of its own instead.
    landlock: bool = False
    # Local folders batch jobs may read inputs from and write outputs to besides the
    # datastore (os.pathsep-separated), e.g. a shared file system mounted on every host; the
    # CLI uploads a local --input instead (services/batch/.../inputs.py says why).
    batch_path_roots: str = ""
    # Hosts and networks batch jobs may fetch http(s) inputs from besides public addresses
    # (comma-separated names, addresses, CIDRs), e.g. an internal file server: loopback,
    # private and link-local addresses are refused otherwise (services/batch/.../fetch.py).
    batch_url_allow: str = ""
    nats_port: int = 0
    nats_monitor_port: int = 0
    events_stream: str = "SLUICE_EVENTS"
    events_subject_prefix: str = "sluice.events"

    ports: ServicePorts = ServicePorts()
    envoy: EnvoySettings = EnvoySettings()

    registry_address: str | None = Field(
        default=None, description="host:port of the registry; unset = the local platform's"
    )
    provisioner_address: str | None = Field(
        default=None, description="host:port of the provisioner; unset = the local platform's"
    )
    batch_address: str | None = Field(
        default=None, description="host:port of the batch service; unset = the local platform's"
    )
    metrics_address: str | None = Field(
        default=None, description="host:port of the metrics service; unset = the local platform's"
    )
    admin_token: str | None = None
    # Fernet key (urlsafe base64, 32 bytes) that encrypts endpoint keys at rest.
    secret_key: str | None = None
    # The platform CA and the identities it issued (sluice.common.pki); default <state_dir>/pki.
    pki_dir: Path | None = None
    # How often `sluice up`'s watchdog looks for leaves near their end while the platform
    # runs (it renews them and restarts the component that holds each: supervise.py).
    cert_check_interval_s: float = 3600.0

    # The registry removes stored artifacts nothing refers to, every interval, once they are
    # older than the grace period (services/registry/.../artifact_gc.py).
    artifact_gc_interval_s: float = 3600.0
    artifact_gc_grace_s: float = 86400.0

    # Where the provisioner caches built environments (default <state_dir>/envs).
    envs_dir: Path | None = None
    # Kubernetes online deployments run on this cluster: a kubeconfig path, or "in-cluster"
    # (the pod's service account). Unset: they fail, saying so.
    kubeconfig: str | None = None
    kubernetes_namespace: str = "sluice"
    kubernetes_image: str = "sluice:dev"
    # A deployment with `scale_settings.min_instances: 0` (and no autoscale setting) goes to
    # zero once its instances' workers have been idle this long (docs/autoscale.md).
    scale_to_zero_idle_s: float = 300.0
    # `scale_settings: type: target_utilization` scales in to the highest count it recommended
    # over this window (Kubernetes' HPA downscale stabilization, 300 s by default there too;
    # docs/autoscale.md).
    scale_in_stabilization_s: float = 300.0

    # Bytes a deployment's data collector may keep on disk (a ring buffer: the oldest closed
    # partitions are deleted to make room, and records are dropped and counted only when none
    # is left); a deployment's DATA_COLLECTOR_MAX_BYTES variable may lower it.
    data_collector_max_bytes: int = 1024**3

    # OpenTelemetry (docs/tracing.md): off by default.
    tracing: TracingSettings = TracingSettings()

    # Where the service serves Prometheus' /metrics over HTTP (0 = a free port; unset = off).
    prometheus_port: int | None = None

    log_level: str = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    service_name: str = "sluice"

    @model_validator(mode="after")
    def _nats_credentials(self) -> Settings:
        """compose and Kubernetes hand each service its NATS password as a file (its own
        secret, never in the image or the shared volume): it joins nats_url here, so every
        user of nats_url connects as the service's own user."""
        if self.nats_password_file is None:
            return self
        if not self.nats_user or not self.nats_url:
            raise ValueError("SLUICE_NATS_PASSWORD_FILE needs SLUICE_NATS_USER and SLUICE_NATS_URL")
        password = self.nats_password_file.read_text().strip()
        self.nats_url = with_nats_user(self.nats_url, self.nats_user, password)
        self.nats_password_file = None  # applied: a copy of these settings must not apply it again
        return self

    @model_validator(mode="after")
    def _mongodb_credentials(self) -> Settings:
        """`mongodb://host/?x` + SLUICE_MONGODB_PASSWORD -> `mongodb://sluice:<pw>@host/?x&...`
        (a URI that names a user already is kept: the local platform hands its services one)."""
        if not self.mongodb_password:
            return self
        if not self.mongodb_uri:
            raise ValueError("SLUICE_MONGODB_PASSWORD needs SLUICE_MONGODB_URI")
        if "@" not in urlsplit(self.mongodb_uri).netloc:
            self.mongodb_uri = with_mongo_user(self.mongodb_uri, MONGO_USER, self.mongodb_password)
        self.mongodb_password = None  # applied, as the NATS password above
        return self

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki_folder(self) -> Path:
        return self.pki_dir or self.state_dir / "pki"

    @property
    def envs_folder(self) -> Path:
        """Built environments, shared by the provisioner, the batch runner and `--local`."""
        return (self.envs_dir or self.state_dir / "envs").absolute()


def with_nats_user(url: str, user: str, password: str) -> str:
    """`nats://host:port` -> `nats://user:password@host:port`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def user_inbox(user: str) -> str:
    """A NATS user's own inboxes (`_INBOX_<user>`): its clients set it (nats-py
    `inbox_prefix`), and it may receive on no other user's (nats_auth's permissions), so no
    user reads another's replies."""
    return f"_INBOX_{user}"


def with_mongo_user(uri: str, user: str, password: str) -> str:
    """`mongodb://host:port/?x` -> `mongodb://user:<password>@host:port/?x&authSource=admin`
    (the password percent-encoded, as MongoDB URIs require)."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(q for q in (parts.query, "authSource=admin") if q)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def service_env(settings: Settings) -> dict[str, str]:
    """The SLUICE_* environment that makes a service process run with `settings`.

    What `sluice up`, the test harness and the benchmarks give the services they start.
    """
    env = {
        "SLUICE_STATE_DIR": str(settings.state_dir),
        "SLUICE_HOST": settings.host,
        "SLUICE_DOMAIN": settings.domain,
        "SLUICE_NATS_URL": settings.nats_url or "",
        "SLUICE_MONGODB_URI": settings.mongodb_uri or "",
        "SLUICE_MONGODB_DATABASE": settings.mongodb_database,
        "SLUICE_EVENTS_STREAM": settings.events_stream,
        "SLUICE_EVENTS_SUBJECT_PREFIX": settings.events_subject_prefix,
        "SLUICE_ADMIN_TOKEN": settings.admin_token or "",
        "SLUICE_SECRET_KEY": settings.secret_key or "",
        "SLUICE_LOG_FORMAT": "json",
        "SLUICE_LOG_LEVEL": settings.log_level,
        "SLUICE_ENVOY__HTTP_PORT": str(settings.envoy.http_port),
        "SLUICE_ENVOY__HTTPS_PORT": str(settings.envoy.https_port),
        "SLUICE_ENVOY__HTTP_ENABLED": str(settings.envoy.http_enabled).lower(),
    }
    if settings.envoy.management_port is not None:
        env["SLUICE_ENVOY__MANAGEMENT_PORT"] = str(settings.envoy.management_port)
    if settings.registry_address:
        env["SLUICE_REGISTRY_ADDRESS"] = settings.registry_address
    if settings.pki_dir is not None:
        env["SLUICE_PKI_DIR"] = str(settings.pki_dir)
    if settings.envs_dir is not None:
        env["SLUICE_ENVS_DIR"] = str(settings.envs_dir)
    if settings.batch_url_allow:
        env["SLUICE_BATCH_URL_ALLOW"] = settings.batch_url_allow
    if settings.landlock:
        env["SLUICE_LANDLOCK"] = "true"
    for field in TracingSettings.model_fields:
        value = getattr(settings.tracing, field)
        if value is not None:
            env[f"SLUICE_TRACING__{field.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    for field in type(settings.ports).model_fields:
        env[f"SLUICE_PORTS__{field.upper()}"] = str(getattr(settings.ports, field))
    return env


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener bound to `host` (the management
    listener speaks plain HTTP there, TLS anywhere else)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
