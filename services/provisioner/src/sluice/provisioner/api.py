"""gRPC face of the provisioner: the logs of instances (a kubernetes deployment's: its pods',
through the cluster's API) and environment builds, and what deployments' data collectors
wrote (files only the provisioner's host has)."""

from __future__ import annotations

import asyncio

import grpc

from sluice.common.collected import collected_dir, read_collected
from sluice.common.environments import EnvironmentBuilder
from sluice.common.resources import COLLECTIONS, ComputeKind, OnlineDeploymentDoc
from sluice.provisioner.kubernetes import NO_CLUSTER, ClusterError, KubernetesBackend, NoInstance
from sluice.provisioner.local import LocalBackend, tail
from sluice.provisioner.store import ProvisionerStore
from sluice.v1 import provisioner_pb2, provisioner_pb2_grpc

DEFAULT_LINES = 200
DEFAULT_RECORDS = 100
CONTAINERS = ("inference-server", "storage-initializer")
# Azure's containerType (any case) -> ours.
CONTAINER_TYPES = {
    "": "inference-server",
    "inferenceserver": "inference-server",
    "storageinitializer": "storage-initializer",
}
NO_STORAGE_INITIALIZER = (
    "kubernetes deployment: no storage initializer runs; its pods run the platform's image "
    "and mount their model and code read-only from the state volume"
)


class ProvisionerApi(provisioner_pb2_grpc.ProvisionerServicer):
    def __init__(
        self,
        store: ProvisionerStore,
        backend: LocalBackend,
        envs: EnvironmentBuilder,
        cluster: KubernetesBackend | None = None,
    ):
        """`cluster`: where kubernetes deployments run (None: no cluster configured)."""
        self._store = store
        self._backend = backend
        self._envs = envs
        self._cluster = cluster

    async def GetLogs(
        self, request: provisioner_pb2.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> provisioner_pb2.Logs:
        lines = request.lines or DEFAULT_LINES
        container = request.container or "inference-server"
        if container not in CONTAINERS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"container must be one of {', '.join(CONTAINERS)}, got {container!r}",
            )
        key = f"{request.endpoint_name}/{request.deployment_name}"
        doc = await self._store.deployment(key)
        if doc is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"deployment {request.deployment_name!r} does not exist in endpoint "
                f"{request.endpoint_name!r}",
            )
            raise AssertionError("unreachable: abort raises")
        if doc.spec.kind is ComputeKind.kubernetes:
            return await self._pod_logs(request, doc, container, lines, context)
        if container == "storage-initializer":
            resolved = self._envs.resolve(doc.spec.environment)
            if not resolved.requirements:
                text = "\n".join(
                    ["environment: the platform's own (no extra requirements)", *resolved.warnings]
                )
                return provisioner_pb2.Logs(text=text)
            path = self._envs.log_path(resolved.key)
            return provisioner_pb2.Logs(text=tail(path, lines), path=str(path))
        folder = self._backend.instance_logs(request.endpoint_name, request.deployment_name)
        logs = (
            sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
        )
        if request.instance_id and logs and request.instance_id not in {p.stem for p in logs}:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no log of instance {request.instance_id!r} of {key}; instances with logs "
                f"(oldest first): {', '.join(p.stem for p in logs)}",
            )
        if request.instance_id:
            logs = [p for p in logs if p.stem == request.instance_id]
        if not logs:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no instance of {key} has started yet (state {doc.meta.provisioning_state.value})",
            )
        newest = logs[-1]
        return provisioner_pb2.Logs(
            text=tail(newest, lines), instance_id=newest.stem, path=str(newest)
        )

    async def _pod_logs(
        self,
        request: provisioner_pb2.GetLogsRequest,
        doc: OnlineDeploymentDoc,
        container: str,
        lines: int,
        context: grpc.aio.ServicerContext,
    ) -> provisioner_pb2.Logs:
        """A kubernetes deployment's log: its newest pod's, or pod `instance_id`'s."""
        if container == "storage-initializer":
            return provisioner_pb2.Logs(text=NO_STORAGE_INITIALIZER)
        if self._cluster is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_CLUSTER)
            raise AssertionError("unreachable: abort raises")
        key = f"{request.endpoint_name}/{request.deployment_name}"
        try:
            pod, text = await asyncio.to_thread(
                self._cluster.instance_log,
                request.endpoint_name,
                request.deployment_name,
                lines,
                request.instance_id,
            )
        except NoInstance as exc:
            state = doc.meta.provisioning_state.value
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{key}: {exc} (state {state})")
            raise AssertionError("unreachable: abort raises") from exc
        except ClusterError as exc:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the cluster gives no log of {key}'s pod: {exc}",
            )
            raise AssertionError("unreachable: abort raises") from exc
        namespace = self._cluster.cluster.namespace
        return provisioner_pb2.Logs(text=text, instance_id=pod, path=f"pod {namespace}/{pod}")

    async def GetDeploymentLogs(
        self, request: provisioner_pb2.DeploymentLogsRequest, context: grpc.aio.ServicerContext
    ) -> provisioner_pb2.DeploymentLogs:
        container = CONTAINER_TYPES.get(request.container_type.lower())
        if container is None or request.tail < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "containerType must be InferenceServer or StorageInitializer and tail at least "
                f"0, got {request.container_type!r} and {request.tail}",
            )
        logs = await self.GetLogs(
            provisioner_pb2.GetLogsRequest(
                endpoint_name=request.endpoint_name,
                deployment_name=request.deployment_name,
                lines=request.tail,
                container=container or "",
                instance_id=request.instance_id,
            ),
            context,
        )
        return provisioner_pb2.DeploymentLogs(content=logs.text, instance_id=logs.instance_id)

    async def GetCollected(
        self, request: provisioner_pb2.GetCollectedRequest, context: grpc.aio.ServicerContext
    ) -> provisioner_pb2.Collected:
        if request.collection and request.collection not in COLLECTIONS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"collection must be one of {', '.join(COLLECTIONS)}, got {request.collection!r}",
            )
        if request.since_seconds < 0 or request.limit < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "since_seconds and limit cannot be negative"
            )
        for name in (request.endpoint_name, request.deployment_name):
            if not name or "/" in name or "\0" in name or name in (".", ".."):
                # It names a folder read as root: one of the collector's, nothing else.
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{name!r} is not an endpoint's or a "
                    "deployment's name",
                )  # fmt: skip
        key = f"{request.endpoint_name}/{request.deployment_name}"
        doc = await self._store.deployment(key)
        folder = collected_dir(
            self._backend.state_dir, request.endpoint_name, request.deployment_name
        )
        if doc is None and not folder.is_dir():  # a deleted deployment's data stays readable
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"deployment {request.deployment_name!r} does not exist in endpoint "
                f"{request.endpoint_name!r} and collected nothing",
            )
        view = await asyncio.to_thread(
            read_collected,
            folder,
            collection=request.collection,
            since_s=request.since_seconds,
            limit=request.limit or DEFAULT_RECORDS,
        )
        return provisioner_pb2.Collected(
            files=[
                provisioner_pb2.CollectedFile(
                    path=str(f.path), collection=f.collection, size_bytes=f.size_bytes
                )
                for f in view.files
            ],
            records=view.records,
            total_records=view.total_records,
            dropped=view.dropped,
            folder=str(folder),
            evicted=view.evicted,
            evicted_before=view.evicted_before,
        )
