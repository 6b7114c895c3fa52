"""Envoy's own numbers, read from its admin interface: open connections and access-log drops.

The access log says what each request did, not how many connections are
open, nor what Envoy could not log. Envoy's stats say both. Every few
seconds the aggregator reads, from each Envoy in `SLUICE_METRICS_ENVOY_ADMIN`
(`http://host:port` or the path of its admin socket, comma-separated):

- `cluster.<c>.upstream_cx_active`: the gateway's open connections to a
  deployment's instances. The cluster is attributed to its endpoint and
  deployment by the metadata the traffic controller puts on it
  (`filter_metadata.sluice`), read from `/config_dump` when a cluster is new,
  never by parsing its name. Each poll adds one sample (summed over the
  Envoys) to the deployment's minute bucket: `ConnectionsActive` is the
  minute's mean, and an endpoint's is the sum of its deployments'.
- `http.<listener>.downstream_cx_active`: clients' connections to the
  gateway. Every endpoint shares the gateway's listeners, and one HTTP/2
  connection can carry requests for several endpoints, so these belong to
  no endpoint: a gateway-wide gauge per Envoy.
- `access_logs.grpc_access_log.logs_written` / `logs_dropped`: entries Envoy
  queued for, or dropped instead of sending to, the access-log stream (its
  buffer full because the aggregator is slow or away): requests the metrics
  will never count, so they are exported as counters per Envoy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from sluice.common.log import get_logger
from sluice.metrics.buckets import Buckets

log = get_logger(__name__)
METADATA_NAMESPACE = "sluice"
STATS_FILTER = (
    r"^(cluster\..+\.upstream_cx_active|http\..+\.downstream_cx_active"
    r"|access_logs\.grpc_access_log\.logs_(written|dropped))$"
)
UPSTREAM = ("cluster.", ".upstream_cx_active")
DOWNSTREAM = ("http.", ".downstream_cx_active")
WRITTEN = "access_logs.grpc_access_log.logs_written"
DROPPED = "access_logs.grpc_access_log.logs_dropped"
ADMIN_LISTENER = "http.admin.downstream_cx_active"  # the admin interface's own
# Cluster owners are read again this often too (a cluster first seen while warming is not in
# the active clusters yet).
OWNERS_TTL_S = 60.0


@dataclass(frozen=True)
class EnvoyReading:
    """One Envoy at its last poll."""

    up: bool = False
    client_connections: int = 0
    logs_written: int = 0
    logs_dropped: int = 0


class AdminClient:
    """Envoy's admin interface at `http://host:port` or on a unix socket (a path)."""

    def __init__(self, address: str, timeout_s: float = 2.0):
        self.address = address
        if address.startswith(("http://", "https://")):
            self._client = httpx.AsyncClient(base_url=address, timeout=timeout_s)
        else:
            path = address.removeprefix("unix:")
            transport = httpx.AsyncHTTPTransport(uds=path)
            self._client = httpx.AsyncClient(
                transport=transport, base_url="http://envoy", timeout=timeout_s
            )

    async def get_json(self, path: str, **params: str) -> Any:
        reply = await self._client.get(path, params=params)
        reply.raise_for_status()
        return reply.json()

    async def close(self) -> None:
        await self._client.aclose()


def parse_targets(setting: str) -> list[str]:
    return [part.strip() for part in setting.split(",") if part.strip()]


def _between(name: str, affix: tuple[str, str]) -> str | None:
    prefix, suffix = affix
    if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix + suffix):
        return name[len(prefix) : -len(suffix)]
    return None


def cluster_owners(config_dump: Any) -> dict[str, tuple[str, str] | None]:
    """Cluster name -> (endpoint, deployment) from each dynamic cluster's metadata; None for
    clusters that are no deployment's (the access-log stream's, for one)."""
    owners: dict[str, tuple[str, str] | None] = {}
    for config in config_dump.get("configs", []):
        cluster = config.get("cluster", {})
        name = cluster.get("name")
        if not name:
            continue
        tags = cluster.get("metadata", {}).get("filter_metadata", {}).get(METADATA_NAMESPACE)
        if tags and tags.get("endpoint") and tags.get("deployment"):
            owners[name] = (str(tags["endpoint"]), str(tags["deployment"]))
        else:
            owners[name] = None
    return owners


class EnvoyStats:
    def __init__(self, targets: list[str], buckets: Buckets):
        self._admins = [AdminClient(t) for t in targets]
        self._buckets = buckets
        self._owners: dict[str, tuple[str, str] | None] = {}
        self._owners_read_at = 0.0
        self.envoys: dict[str, EnvoyReading] = {t: EnvoyReading() for t in targets}

    async def poll(self, now: float | None = None) -> None:
        """Read every Envoy once; one ConnectionsActive sample per deployment seen."""
        now = now if now is not None else time.time()
        per_deployment: dict[tuple[str, str], int] = {}
        for admin in self._admins:
            try:
                values = await self._read(admin)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                if self.envoys[admin.address].up:
                    log.warning("envoy_admin_unreachable", envoy=admin.address, error=str(exc))
                self.envoys[admin.address] = EnvoyReading(up=False)
                continue
            for cluster, count in values["upstream"].items():
                owner = self._owners.get(cluster)
                if owner is not None:
                    per_deployment[owner] = per_deployment.get(owner, 0) + count
            previous = self.envoys[admin.address]
            reading = EnvoyReading(
                up=True,
                client_connections=values["downstream"],
                logs_written=values["written"],
                logs_dropped=values["dropped"],
            )
            if reading.logs_dropped > previous.logs_dropped:
                log.warning(
                    "envoy_dropped_access_log_entries",
                    envoy=admin.address,
                    dropped=reading.logs_dropped - previous.logs_dropped,
                )
            self.envoys[admin.address] = reading
        for (endpoint, deployment), count in per_deployment.items():
            self._buckets.add_connections(
                endpoint=endpoint, deployment=deployment, time_s=now, connections=count
            )

    async def _read(self, admin: AdminClient) -> dict[str, Any]:
        reply = await admin.get_json("/stats", format="json", filter=STATS_FILTER)
        stats = {s["name"]: int(s["value"]) for s in reply.get("stats", []) if "value" in s}
        upstream = {}
        for name, value in stats.items():
            cluster = _between(name, UPSTREAM)
            if cluster is not None:
                upstream[cluster] = value
        stale = time.monotonic() - self._owners_read_at > OWNERS_TTL_S
        if stale or any(c not in self._owners for c in upstream):
            dump = await admin.get_json("/config_dump", resource="dynamic_active_clusters")
            owners: dict[str, tuple[str, str] | None] = dict.fromkeys(upstream)
            self._owners = owners | cluster_owners(dump)
            self._owners_read_at = time.monotonic()
        downstream = sum(
            v for k, v in stats.items() if _between(k, DOWNSTREAM) and k != ADMIN_LISTENER
        )
        return {
            "upstream": upstream,
            "downstream": downstream,
            "written": stats.get(WRITTEN, 0),
            "dropped": stats.get(DROPPED, 0),
        }

    async def close(self) -> None:
        for admin in self._admins:
            await admin.close()
