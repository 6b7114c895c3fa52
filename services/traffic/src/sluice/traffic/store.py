"""The only MongoDB code of the traffic controller: endpoint documents -> domain values.

It only reads: the registry writes endpoints, deployments and keys, the
provisioner writes instances (in their own collection, joined here). Keys
are decrypted here (SecretBox) and leave this module only inside `KeyAuth`,
whose repr hides them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from sluice.common import gateway_auth
from sluice.common.log import get_logger
from sluice.common.mongo import Document
from sluice.common.resources import (
    DEPLOYMENT_INSTANCES,
    GATEWAY_APPLIED,
    ONLINE_DEPLOYMENTS,
    ONLINE_ENDPOINTS,
    AuthMode,
    DeploymentInstancesDoc,
    Instance,
    OnlineDeploymentDoc,
    OnlineEndpointDoc,
    deployment_id,
    from_document,
    token_audience,
)
from sluice.common.secretbox import SecretBox, SecretBoxError
from sluice.traffic.domain import (
    Auth,
    Deployment,
    Endpoint,
    KeyAuth,
    Owner,
    TokenAuth,
    Upstream,
    live_shares,
    mirror_share,
)

log = get_logger(__name__)


class TrafficStore:
    def __init__(self, db: AsyncDatabase[Document], secrets: SecretBox):
        self._endpoints = db[ONLINE_ENDPOINTS]
        self._deployments = db[ONLINE_DEPLOYMENTS]
        self._instances = db[DEPLOYMENT_INSTANCES]
        self._applied = db[GATEWAY_APPLIED]
        self._secrets = secrets

    async def record_applied(
        self, snapshot: str, endpoints: Mapping[str, int], clusters: Mapping[str, Owner]
    ) -> None:
        """What Envoy serves now, for readers without NATS (the REST API, the portal), and
        which deployment each of its clusters serves: the metadata the clusters carry, for
        the metrics service, which sees Envoy's stats by cluster name only."""
        await self._applied.replace_one(
            {"_id": "gateway"},
            {
                "_id": "gateway",
                "snapshot": snapshot,
                "endpoints": dict(endpoints),
                "clusters": {
                    name: {"endpoint": o.endpoint, "deployment": o.deployment}
                    for name, o in clusters.items()
                },
            },
            upsert=True,
        )

    async def all_endpoints(self) -> dict[str, Endpoint]:
        endpoints = await self._endpoints.find({}).to_list()
        deployments = await self._deployments.find({}).to_list()
        instances = await self._instances_of({})
        by_endpoint: dict[str, list[Mapping[str, Any]]] = {}
        for raw in deployments:
            by_endpoint.setdefault(raw.get("spec", {}).get("endpoint_name", ""), []).append(raw)
        result = {}
        for raw in endpoints:
            ep = await self._endpoint(raw, by_endpoint.get(str(raw["_id"]), []), instances)
            if ep is not None:
                result[ep.name] = ep
        return result

    async def _instances_of(self, query: Mapping[str, Any]) -> dict[str, tuple[Instance, ...]]:
        """The provisioner's instances by deployment key; an unreadable entry counts as none."""
        found = {}
        for raw in await self._instances.find(dict(query)).to_list():
            try:
                found[str(raw["_id"])] = from_document(DeploymentInstancesDoc, raw).instances
            except ValueError as exc:
                log.error("instances_unreadable", deployment=raw.get("_id"), error=str(exc))
        return found

    async def endpoint(self, name: str) -> Endpoint | None:
        """The endpoint's current state, or None once it is deleted (or unreadable)."""
        raw = await self._endpoints.find_one({"_id": name})
        if raw is None:
            return None
        deployments = await self._deployments.find({"spec.endpoint_name": name}).to_list()
        keys = [str(d["_id"]) for d in deployments]
        return await self._endpoint(
            raw, deployments, await self._instances_of({"_id": {"$in": keys}})
        )

    async def _endpoint(
        self,
        raw: Mapping[str, Any],
        deployment_raws: Iterable[Mapping[str, Any]],
        instances: Mapping[str, tuple[Instance, ...]],
    ) -> Endpoint | None:
        try:
            doc: OnlineEndpointDoc = from_document(OnlineEndpointDoc, raw)
            docs: list[OnlineDeploymentDoc] = [
                from_document(OnlineDeploymentDoc, d) for d in deployment_raws
            ]
            auth = self._auth(doc)
        except (ValueError, SecretBoxError, KeyError) as exc:
            # One unreadable document must not stop the gateway serving the others.
            log.error("endpoint_unreadable", endpoint=raw.get("_id"), error=str(exc))
            return None
        deployments = tuple(
            sorted(
                [await self._deployment(d, instances.get(_key(d), ())) for d in docs],
                key=lambda d: d.name,
            )
        )
        names = {d.name for d in deployments}
        live = live_shares(doc.spec.traffic, names)
        return Endpoint(
            name=doc.spec.name,
            version=doc.meta.version,
            auth=auth,
            traffic=live,
            mirror=mirror_share(doc.spec.mirror_traffic, names, live),
            deployments=deployments,
        )

    def _auth(self, doc: OnlineEndpointDoc) -> Auth:
        if doc.spec.auth_mode is AuthMode.aml_token:
            return TokenAuth(audience=token_audience(doc.spec.name))
        keys = tuple(
            self._secrets.decrypt(doc.keys[which])
            for which in ("primary", "secondary")
            if doc.keys.get(which)
        )
        return KeyAuth(keys=keys)

    async def _deployment(
        self, doc: OnlineDeploymentDoc, instances: Iterable[Instance]
    ) -> Deployment:
        spec = doc.spec
        upstreams = []
        held_s = 0.0  # the activator (scale to zero) holds requests while the deployment wakes
        for instance in instances:
            if not instance.ready:
                continue
            held_s = max(held_s, instance.holds_requests_s)
            upstream = await _resolved(instance.address, spec.endpoint_name, spec.name)
            if upstream is not None:
                upstreams.append(upstream)
        return Deployment(
            endpoint=spec.endpoint_name,
            name=spec.name,
            version=doc.meta.version,
            request_timeout_ms=spec.request_settings.request_timeout_ms + round(held_s * 1000),
            max_concurrent_requests_per_instance=spec.request_settings.max_concurrent_requests_per_instance,
            instances=tuple(sorted(set(upstreams), key=lambda u: (u.host, u.port))),
            gateway_secret=self._secrets.derive(
                gateway_auth.purpose(spec.endpoint_name, spec.name)
            ),
        )


def _key(doc: OnlineDeploymentDoc) -> str:
    return deployment_id(doc.spec.endpoint_name, doc.spec.name)


async def _resolved(address: str, endpoint: str, deployment: str) -> Upstream | None:
    """EDS takes IP addresses only: a host name (a pod's DNS name, `localhost`) is resolved."""
    try:
        upstream = Upstream.parse(address)
    except ValueError as exc:
        log.error(
            "instance_address_invalid", endpoint=endpoint, deployment=deployment, error=str(exc)
        )
        return None
    if upstream.is_ip:
        return upstream
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            upstream.host, upstream.port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        log.warning(
            "instance_unresolvable", endpoint=endpoint, deployment=deployment, error=str(exc)
        )
        return None
    return Upstream(host=str(infos[0][4][0]), port=upstream.port)
