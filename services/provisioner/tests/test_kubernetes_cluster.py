"""KubernetesBackend and KubernetesDeployment over the official client: a failed rollout's
status message and `get-logs`.

No API server runs here, so `StandInApi` stands in for the official client's objects
(ApiClient, AppsV1Api, CoreV1Api, the DynamicClient): it keeps what was applied and
answers with the API's JSON, the pods and the logs each test sets, and the API's own
errors (`ApiException` with a Status body). MongoDB, NATS, the reporter and the
provisioner's gRPC API are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from faststream.nats import NatsBroker
from kubernetes.client.exceptions import ApiException
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.environments import EnvironmentBuilder
from sluice.common.events import EventPublisher, Outbox
from sluice.common.mongo import Document
from sluice.common.resources import (
    DEPLOYMENT_INSTANCES,
    ONLINE_DEPLOYMENTS,
    ComputeKind,
    DeploymentInstancesDoc,
    Meta,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    ProvisioningState,
    deployment_id,
    from_document,
    to_document,
)
from sluice.common.settings import Settings
from sluice.provisioner.api import ProvisionerApi
from sluice.provisioner.kubernetes import (
    NO_CLUSTER,
    TEMPLATE_ANNOTATION,
    ClusterSettings,
    KubernetesApis,
    KubernetesBackend,
    KubernetesCompute,
)
from sluice.provisioner.local import LocalBackend
from sluice.provisioner.reconciler import Context, DeploymentWorker
from sluice.provisioner.routing import RoutingView
from sluice.provisioner.store import ProvisionerStore
from sluice.v1 import provisioner_pb2, provisioner_pb2_grpc

KEY = deployment_id("k8s-ep", "blue")
# What the inference server writes (--log-format json), and an init() that raises.
CRASH_LOG = "\n".join(
    [
        *(json.dumps({"event": "loading", "level": "info", "step": i}) for i in range(30)),
        json.dumps(
            {
                "event": "init_failed",
                "level": "error",
                "exception": "Traceback (most recent call last):\n"
                '  File "score.py", line 7, in init\n'
                "ValueError: model.pkl is missing",
            }
        ),
    ]
)


def refused(message: str) -> ApiException:
    """The API server's answer to a read it cannot serve (a Status object)."""
    body = {"kind": "Status", "status": "Failure", "message": message, "code": 400}
    return ApiException(status=400, reason="Bad Request", body=json.dumps(body))


class StandInApi:
    """The official client's objects, over an API server that is not here."""

    def __init__(self) -> None:
        self.applied: dict[str, dict[str, Any]] = {}  # kind -> the body last applied
        self.generation = 0  # of the Deployment: one more per apply
        self.status: dict[str, Any] = {}
        self.pods: list[dict[str, Any]] = []
        # (pod, previous) -> its log, or the API server's refusal
        self.logs: dict[tuple[str, bool], str | ApiException] = {}
        self.log_reads: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.resources = self  # DynamicClient.resources

    # ApiClient: the stand-in answers with the API's JSON already.
    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj

    # DynamicClient
    def get(self, api_version: str, kind: str) -> StandInResource:
        return StandInResource(self, kind)

    # AppsV1Api
    def read_namespaced_deployment(self, name: str, namespace: str) -> dict[str, Any]:
        applied = self.applied["Deployment"]
        meta = {**applied["metadata"], "generation": self.generation}
        return {**applied, "metadata": meta, "status": self.status}

    # CoreV1Api
    def list_namespaced_pod(self, namespace: str, label_selector: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "PodList", "items": self.pods}

    def read_namespaced_pod_log(self, name: str, namespace: str, **query: Any) -> str:
        self.log_reads.append({"pod": name, **query})
        text = self.logs.get((name, bool(query.get("previous"))))
        if text is None:
            which = "previous terminated container" if query.get("previous") else "container"
            text = refused(f'{which} "inference-server" in pod "{name}" not found')
        if isinstance(text, ApiException):
            raise text
        return "\n".join(text.splitlines()[-query["tail_lines"] :])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("delete_namespaced_"):  # every object kind's delete
            return lambda obj, namespace: self.deleted.append(f"{name}:{obj}")
        raise AttributeError(name)

    def template(self) -> str:
        """The digest of the pod template applied last (what its pods carry)."""
        meta = self.applied["Deployment"]["spec"]["template"]["metadata"]
        digest: str = meta["annotations"][TEMPLATE_ANNOTATION]
        return digest


class StandInResource:
    def __init__(self, api: StandInApi, kind: str):
        self._api, self._kind = api, kind

    def server_side_apply(self, body: dict[str, Any], **_: Any) -> None:
        self._api.applied[self._kind] = body
        if self._kind == "Deployment":
            self._api.generation += 1


def backend(api: StandInApi) -> KubernetesBackend:
    apis = KubernetesApis(
        client=api, apps=api, core=api, autoscaling=api, networking=api, dynamic=lambda: api
    )
    return KubernetesBackend(apis, ClusterSettings(namespace="ml"))


def rolled_out(api: StandInApi, ready: int, replicas: int) -> None:
    """The controller has seen the applied spec; `ready` of `replicas` pods are ready."""
    api.status = {
        "observedGeneration": api.generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
    }


def pod(
    name: str, template: str, container: dict[str, Any], created: str = "2026-03-02T10:00:00Z"
) -> dict[str, Any]:
    ready = container.get("ready", False)
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "annotations": {TEMPLATE_ANNOTATION: template},
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.244.0.{len(name)}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "inference-server", **container}],
        },
    }


SERVING = {"ready": True, "restartCount": 0, "state": {"running": {}}, "lastState": {}}
CRASH_LOOPING = {
    "ready": False,
    "restartCount": 3,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
}
IMAGE_MISSING = {
    "ready": False,
    "restartCount": 0,
    "state": {
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "reg.example/sluice:1"',
        }
    },
    "lastState": {},
}


def spec(**changes: Any) -> OnlineDeploymentSpec:
    return OnlineDeploymentSpec(
        name="blue", endpoint_name="k8s-ep", kind=ComputeKind.kubernetes, instance_count=2
    ).model_copy(update=changes)


async def save(db: AsyncDatabase[Document], version: int, **changes: Any) -> OnlineDeploymentDoc:
    """Version `version` of the deployment, as the registry writes a change (same document)."""
    raw = await db[ONLINE_DEPLOYMENTS].find_one({"_id": KEY})
    meta = from_document(OnlineDeploymentDoc, raw).meta if raw else Meta()
    doc = OnlineDeploymentDoc(
        spec=spec(**changes), meta=meta.model_copy(update={"version": version})
    )
    await db[ONLINE_DEPLOYMENTS].replace_one({"_id": KEY}, to_document(doc, KEY), upsert=True)
    return doc


async def stored(db: AsyncDatabase[Document]) -> OnlineDeploymentDoc:
    raw: Mapping[str, Any] | None = await db[ONLINE_DEPLOYMENTS].find_one({"_id": KEY})
    assert raw is not None
    listed = await db[DEPLOYMENT_INSTANCES].find_one({"_id": KEY})
    instances = from_document(DeploymentInstancesDoc, listed).instances if listed else ()
    return from_document(OnlineDeploymentDoc, raw).model_copy(update={"instances": instances})


def provisioner_store(
    db: AsyncDatabase[Document], broker: NatsBroker, settings: Settings
) -> ProvisionerStore:
    publisher = EventPublisher(
        broker,
        source="sluice/provisioner",
        subject_prefix=settings.events_subject_prefix,
        stream=settings.events_stream,
    )
    return ProvisionerStore(db, Outbox(db, publisher))


def worker(
    api: StandInApi, db: AsyncDatabase[Document], broker: NatsBroker, settings: Settings
) -> DeploymentWorker:
    compute = KubernetesCompute(backend(api), RoutingView())
    store = provisioner_store(db, broker, settings)
    return DeploymentWorker(KEY, Context(store=store, backends={ComputeKind.kubernetes: compute}))


async def test_an_update_whose_new_pod_crash_loops_fails_with_its_last_lines_and_old_pods_serve(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    api = StandInApi()
    blue = worker(api, mongo_db, nats_broker, sluice_settings)
    await save(mongo_db, 1)
    await blue.converge()
    first = api.template()
    api.pods = [pod("blue-a", first, SERVING), pod("blue-b", first, SERVING)]
    rolled_out(api, ready=2, replicas=2)
    await blue.converge()
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.succeeded

    # Version 2 changes the pod template; its first pod crash-loops (init() raises).
    await save(mongo_db, 2, environment_variables={"MODEL_FILE": "model.pkl"})
    await blue.converge()
    second = api.template()
    assert second != first
    api.pods.append(pod("blue-new", second, CRASH_LOOPING))
    api.logs[("blue-new", True)] = CRASH_LOG
    api.status = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2}
    await blue.converge()

    failed = await stored(mongo_db)
    assert failed.meta.provisioning_state is ProvisioningState.failed
    message = failed.meta.status_message
    assert message.startswith(
        "instance blue-new exited with code 1 before it was ready (init() failed?); "
        "Kubernetes restarted it 3 times (CrashLoopBackOff).\nLast log lines:\n"
    )
    # The crashed container's last lines, as a person reads them: the traceback on its own lines.
    assert message.endswith('  File "score.py", line 7, in init\nValueError: model.pkl is missing')
    assert api.log_reads == [
        {"pod": "blue-new", "container": "inference-server", "previous": True, "tail_lines": 20}
    ]
    # Kubernetes keeps the old pods (maxUnavailable 0): they stay instances and serve.
    assert [(i.id, i.ready) for i in failed.instances] == [
        ("blue-a", True),
        ("blue-b", True),
        ("blue-new", False),
    ]
    assert "delete_namespaced_deployment:k8s-ep-blue" not in api.deleted  # nothing torn down

    await blue.converge()  # the verdict stays; the log is not read again
    assert len(api.log_reads) == 1
    assert (await stored(mongo_db)).meta.status_message == message

    # Version 3 fixes it: the failed version's pod still crash-loops while the new one starts.
    await save(mongo_db, 3, environment_variables={"MODEL_FILE": "model.onnx"})
    await blue.converge()
    starting = {**SERVING, "ready": False}
    api.pods.append(pod("blue-fixed", api.template(), starting))
    await blue.converge()
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.updating


async def test_a_pod_that_cannot_pull_its_image_fails_the_create_without_a_log() -> None:
    api = StandInApi()
    blue = KubernetesCompute(backend(api), RoutingView()).deployment(KEY)
    doc = OnlineDeploymentDoc(spec=spec(), meta=Meta(version=1))
    await blue.converge(doc)
    api.pods = [pod("blue-a", api.template(), IMAGE_MISSING)]
    seen = await blue.converge(doc)
    assert seen.failure == (
        "instance blue-a cannot pull its image (ImagePullBackOff): "
        'Back-off pulling image "reg.example/sluice:1".'
    )
    assert not seen.busy  # nothing changes by itself: looked at again at the idle pace
    assert api.log_reads == []  # no container ran


async def test_a_failure_whose_log_cannot_be_read_says_so() -> None:
    api = StandInApi()
    blue = KubernetesCompute(backend(api), RoutingView()).deployment(KEY)
    doc = OnlineDeploymentDoc(spec=spec(), meta=Meta(version=1))
    await blue.converge(doc)
    api.pods = [pod("blue-a", api.template(), CRASH_LOOPING)]
    seen = await blue.converge(doc)
    assert seen.failure is not None
    assert seen.failure.endswith(
        "Last log lines:\n(the log of blue-a could not be read: previous terminated container "
        '"inference-server" in pod "blue-a" not found)'
    )


# ---- get-logs --------------------------------------------------------------------------------


@pytest.fixture
async def provisioner_api(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> AsyncIterator[tuple[StandInApi, list[provisioner_pb2_grpc.ProvisionerStub]]]:
    """The provisioner's gRPC API with a cluster (the stand-in) and one without."""
    api = StandInApi()
    state = sluice_settings.state_dir
    local = LocalBackend(state / "instances", state_dir=state)
    envs = EnvironmentBuilder(state / "envs")
    store = provisioner_store(mongo_db, nats_broker, sluice_settings)
    await save(mongo_db, 1)
    servers, stubs, channels = [], [], []
    for cluster in (backend(api), None):
        server = grpc.aio.server()
        provisioner_pb2_grpc.add_ProvisionerServicer_to_server(
            ProvisionerApi(store, local, envs, cluster), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append(server)
        channels.append(channel)
        stubs.append(provisioner_pb2_grpc.ProvisionerStub(channel))
    yield api, stubs
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)
    await local.close()


def request(**fields: Any) -> provisioner_pb2.GetLogsRequest:
    return provisioner_pb2.GetLogsRequest(endpoint_name="k8s-ep", deployment_name="blue", **fields)


async def test_get_logs_of_a_kubernetes_deployment_reads_its_pods(
    provisioner_api: tuple[StandInApi, list[provisioner_pb2_grpc.ProvisionerStub]],
) -> None:
    api, (stub, no_cluster) = provisioner_api
    api.pods = [
        pod("blue-old", "t", SERVING, created="2026-03-02T10:00:00Z"),
        pod("blue-new", "t", CRASH_LOOPING, created="2026-03-02T11:00:00Z"),
    ]
    api.logs = {("blue-old", False): "old 1\nold 2\nold 3", ("blue-new", False): CRASH_LOG}

    newest = await stub.GetLogs(request(lines=2))
    assert (newest.instance_id, newest.path) == ("blue-new", "pod ml/blue-new")
    assert newest.text == "\n".join(CRASH_LOG.splitlines()[-2:])  # as the pod wrote it
    named = await stub.GetLogs(request(instance_id="blue-old"))
    assert (named.instance_id, named.text) == ("blue-old", "old 1\nold 2\nold 3")
    assert api.log_reads[-1] == {
        "pod": "blue-old",
        "container": "inference-server",
        "previous": False,
        "tail_lines": 200,
    }

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.GetLogs(request(instance_id="blue-gone"))
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert "its pods (oldest first): blue-old, blue-new" in (unknown.value.details() or "")

    api.pods = [pod("blue-pulling", "t", IMAGE_MISSING)]  # no container has run
    api.logs[("blue-pulling", False)] = refused(
        'container "inference-server" in pod "blue-pulling" is waiting to start: trying and '
        "failing to pull image"
    )
    with pytest.raises(grpc.aio.AioRpcError) as waiting:
        await stub.GetLogs(request())
    assert waiting.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert waiting.value.details() == (
        'the cluster gives no log of k8s-ep/blue\'s pod: container "inference-server" in pod '
        '"blue-pulling" is waiting to start: trying and failing to pull image'
    )

    with pytest.raises(grpc.aio.AioRpcError) as without:
        await no_cluster.GetLogs(request())
    assert without.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert without.value.details() == NO_CLUSTER


async def test_a_version_that_rolled_out_is_not_failed_by_later_pods() -> None:
    """Once a version's rollout completed, a pod of it that crash-loops later (or a scale-up
    pod that cannot pull) is Kubernetes' to restart: the version does not turn Failed."""
    api = StandInApi()
    blue = KubernetesCompute(backend(api), RoutingView()).deployment(KEY)
    doc = OnlineDeploymentDoc(spec=spec(), meta=Meta(version=1))
    await blue.converge(doc)
    api.pods = [pod("blue-a", api.template(), SERVING), pod("blue-b", api.template(), SERVING)]
    rolled_out(api, ready=2, replicas=2)
    assert (await blue.converge(doc)).failure is None
    api.pods = [
        pod("blue-a", api.template(), CRASH_LOOPING),
        pod("blue-b", api.template(), IMAGE_MISSING),
    ]
    rolled_out(api, ready=0, replicas=2)
    seen = await blue.converge(doc)
    assert seen.failure is None
    assert [(i.id, i.ready) for i in seen.instances] == [("blue-a", False), ("blue-b", False)]
    # A new version is judged afresh.
    changed = OnlineDeploymentDoc(spec=spec(instance_count=3), meta=Meta(version=2))
    await blue.converge(changed)
    api.pods = [pod("blue-c", api.template(), IMAGE_MISSING)]
    assert (await blue.converge(changed)).failure is not None
