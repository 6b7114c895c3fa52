"""How to launch the real servers Sluice runs on: nats-server, SecantusDB and Envoy.

Each function returns a `ProcessSpec` for the supervisor; the test harness and
`sluice up` use the same ones, so tests run what users run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.common.embedded_mongo import COMMAND as EMBEDDED_MONGO
from sluice.common.health import GrpcHealthCheck, HttpCheck, MongoPingCheck, UnixHttpCheck
from sluice.common.mongo_auth import with_credentials
from sluice.common.pki import XDS_SERVER, Identity
from sluice.common.supervisor import ProcessSpec

ENVOY_BOOTSTRAP = Path("deploy") / "envoy" / "bootstrap.yaml"
# The bootstrap's static clusters: the traffic controller's ADS, the metrics service's stats sink.
XDS_CLUSTER = "sluice_xds"
STATS_CLUSTER = "sluice_stats"
# Envoy's fluentd access logger writes only to a bootstrap cluster (sluice.common.access_log).
ACCESS_LOG_CLUSTER = "sluice_access_log"


def nats_spec(
    *,
    host: str,
    port: int,
    monitor_port: int,
    data_dir: Path,
    name: str = "nats",
    config: Path | None = None,
    pid_file: Path | None = None,
) -> ProcessSpec:
    """`config`: a configuration file with the users (sluice.common.nats_auth); `pid_file`:
    where nats-server writes its pid (the batch service reloads it with SIGHUP)."""
    return ProcessSpec(
        name=name,
        argv=[
            "nats-server",
            *(["--config", str(config)] if config else []),
            *(["--pid", str(pid_file)] if pid_file else []),
            "--addr",
            host,
            "--port",
            str(port),
            "--http_port",
            str(monitor_port),
            "--jetstream",
            "--store_dir",
            str(data_dir),
            # With a configuration file, the name is in it (a reload must not change it).
            *([] if config else ["--server_name", "sluice"]),
        ],
        health=HttpCheck(f"http://{host}:{monitor_port}/healthz?js-enabled-only=true"),
        ports=[port, monitor_port],
        host=host,
        address=f"nats://{host}:{port}",
    )


def mongo_spec(
    *,
    host: str,
    port: int,
    data_dir: Path | None,
    name: str = "mongodb",
    password: str | None = None,
) -> ProcessSpec:
    """SecantusDB, a single-node server speaking MongoDB's wire protocol (None = in memory).

    On disk it runs with `--sync-on-commit`: every commit fsyncs WiredTiger's log
    before the write is acknowledged, so a kill -9 (or power loss) right after an
    acknowledgement loses nothing. Our clients also ask for `j: true` per write
    (sluice.common.mongo), which is what a real mongod needs for the same promise.
    """
    uri = f"mongodb://{host}:{port}/?directConnection=true"
    durability = ["--sync-on-commit"] if data_dir else []
    # With `password`, SecantusDB requires the platform's user (sluice.common.mongo_auth,
    # which created it); the health check logs in with it. `address` names no secret.
    auth = ["--auth"] if password else []
    probe_uri = with_credentials(uri, password) if password else uri
    return ProcessSpec(
        name=name,
        argv=[
            *EMBEDDED_MONGO,
            "--host",
            host,
            "--port",
            str(port),
            "--storage-path",
            str(data_dir) if data_dir else ":memory:",
            "--log-level",
            "WARNING",
            *durability,
            *auth,
        ],
        health=MongoPingCheck(probe_uri),
        ports=[port],
        host=host,
        address=uri,
        stop_timeout_s=20.0,  # WiredTiger checkpoints on a clean shutdown
    )


def render_envoy_bootstrap(
    template: Path,
    *,
    admin_port: int = 0,
    xds_host: str,
    xds_port: int,
    node_id: str,
    admin_socket: Path | None = None,
    tls: Identity | None,
    metrics: tuple[str, int] | None = None,
    access_log: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The bootstrap with its ports filled in. With `admin_socket`, Envoy's admin interface
    (which shows every key and gateway secret in /config_dump) listens on that Unix socket,
    mode 0600, instead of a loopback port any local process, deployment code included,
    could reach.

    `tls` is Envoy's client identity for the xDS, access-log and stats streams (mutual TLS
    with the platform CA; `PlatformPki.client(node_id)`). None is only for benchmarks that
    serve xDS themselves in plain gRPC. `metrics` is the (host, port) of the metrics
    service's gRPC port for Envoy (`ports.als`), where Envoy's stats sink streams its
    stats; `access_log` its access-log port (`ports.access_log`), where the access log
    the traffic controller configures goes. None (or no `tls`) leaves each out."""
    config: dict[str, Any] = yaml.safe_load(template.read_text())
    config["node"]["id"] = node_id
    statics = config["static_resources"]
    clusters = {c["name"]: c for c in statics["clusters"]}
    if tls is None:
        del clusters[XDS_CLUSTER]["transport_socket"], statics["secrets"]
    else:
        client, ca = statics["secrets"]
        client["tls_certificate"]["certificate_chain"]["filename"] = str(tls.cert)
        client["tls_certificate"]["private_key"]["filename"] = str(tls.key)
        ca["validation_context"]["trusted_ca"]["filename"] = str(tls.ca)
    if metrics is None or tls is None:
        del config["stats_sinks"]
        statics["clusters"].remove(clusters[STATS_CLUSTER])
    else:
        _point(clusters[STATS_CLUSTER], *metrics)
    if access_log is None or tls is None:
        statics["clusters"].remove(clusters[ACCESS_LOG_CLUSTER])
    else:
        _point(clusters[ACCESS_LOG_CLUSTER], *access_log)
    if admin_socket is not None:
        config["admin"]["address"] = {"pipe": {"path": str(admin_socket), "mode": 0o600}}
    else:
        config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    _point(clusters[XDS_CLUSTER], xds_host, xds_port)
    return config


def _point(cluster: dict[str, Any], host: str, port: int) -> None:
    """A bootstrap cluster's one endpoint at host:port."""
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"].update(address=host, port_value=port)


def envoy_spec(
    *,
    host: str,
    admin_port: int = 0,
    bootstrap: Path,
    listener_ports: list[int],
    concurrency: int = 1,
    name: str = "envoy",
    admin_socket: Path | None = None,
) -> ProcessSpec:
    """Envoy with its admin interface on `admin_socket` when given, else on `admin_port`."""
    health: HttpCheck | UnixHttpCheck = HttpCheck(f"http://{host}:{admin_port}/ready")
    address = f"http://{host}:{admin_port}"
    admin_ports = [admin_port]
    if admin_socket is not None:
        health = UnixHttpCheck(str(admin_socket), "/ready")
        address, admin_ports = health.describe().partition("#")[0], []
    return ProcessSpec(
        name=name,
        argv=[
            "envoy",
            "-c",
            str(bootstrap),
            "--concurrency",
            str(concurrency),
            "--disable-hot-restart",  # several Envoys (tests, platform) share one machine
            "--log-level",
            "warning",
        ],
        health=health,
        ports=[*admin_ports, *listener_ports],
        host=host,
        address=address,
        open_files=1 << 20,  # a socket per health-checked instance, for 10,000s of them
    )


# Services whose gRPC port speaks mutual TLS (Envoy's doors), by the name their
# certificate carries: their health is checked with the platform's probe certificate.
MUTUAL_TLS_SERVICES = {"traffic": XDS_SERVER}


def python_service_spec(
    *, name: str, module: str, host: str, port: int, env: dict[str, str], python: str
) -> ProcessSpec:
    """One of our services, `python -m <module>`, healthy when its gRPC health says SERVING.

    The PKI folder of a mutual-TLS service's check is the one `env` gives the service
    (SLUICE_PKI_DIR, else <SLUICE_STATE_DIR>/pki, as `Settings.pki_folder`)."""
    health = GrpcHealthCheck(f"{host}:{port}")
    if name in MUTUAL_TLS_SERVICES:
        pki = env.get("SLUICE_PKI_DIR") or str(Path(env["SLUICE_STATE_DIR"]).absolute() / "pki")
        health = GrpcHealthCheck(f"{host}:{port}", pki=pki, server_name=MUTUAL_TLS_SERVICES[name])
    return ProcessSpec(
        name=name,
        argv=[python, "-m", module],
        health=health,
        env=env,
        ports=[port],
        host=host,
        address=f"{host}:{port}",
    )


def find_project_file(relative: Path, *, start: Path | None = None) -> Path:
    """Find a file of the Sluice checkout (deploy/..., examples/...) from cwd or this module."""
    anchors = [start or Path.cwd(), Path(__file__).resolve()]
    for anchor in anchors:
        for folder in [anchor, *anchor.parents]:
            candidate = folder / relative
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{relative} not found above {anchors[0]} (run from the Sluice checkout)"
    )
