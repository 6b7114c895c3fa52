"""gRPC face of the provisioner: the logs of instances and environment builds."""

from __future__ import annotations

import grpc

from sluice.common.environments import EnvironmentBuilder
from sluice.provisioner.local import LocalBackend, tail
from sluice.provisioner.store import ProvisionerStore
from sluice.v1 import provisioner_pb2, provisioner_pb2_grpc

DEFAULT_LINES = 200
CONTAINERS = ("inference-server", "storage-initializer")


class ProvisionerApi(provisioner_pb2_grpc.ProvisionerServicer):
    def __init__(self, store: ProvisionerStore, backend: LocalBackend, envs: EnvironmentBuilder):
        self._store = store
        self._backend = backend
        self._envs = envs

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
