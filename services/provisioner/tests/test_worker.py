"""A deployment's worker on the Kubernetes backend: the same status and events as local.

Real MongoDB and NATS (the store and the reporter are ours); the Kubernetes API
server is the one thing stood in for, by `StandInCluster`, which keeps the
objects applied and answers with the API's JSON, as `KubernetesBackend` does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from faststream.nats import NatsBroker
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.events import EventPublisher, Outbox, OutboxRelay
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
    ScaleSettings,
    deployment_id,
    from_document,
    to_document,
)
from sluice.common.settings import Settings
from sluice.provisioner.kubernetes import ClusterSettings, ClusterState, KubernetesCompute, render
from sluice.provisioner.reconciler import Context, DeploymentWorker
from sluice.provisioner.routing import RoutingView
from sluice.provisioner.store import ProvisionerStore

KEY = deployment_id("k8s-ep", "blue")


class StandInCluster:
    """The API server's side of `KubernetesBackend`: objects applied, pods the test sets."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.complete = False

    def apply(self, doc: OnlineDeploymentDoc, autoscale: Any = None) -> None:
        rendered = render(doc, ClusterSettings(), None, autoscale)
        kinds = {o["kind"] for o in rendered}
        self.objects = {k: v for k, v in self.objects.items() if k in kinds} | {
            o["kind"]: o for o in rendered
        }

    def state(self, endpoint: str, deployment: str) -> ClusterState:
        replicas = self.objects["Deployment"]["spec"].get("replicas", 1)
        ready = sum(c["status"] == "True" for p in self.pods for c in p["status"]["conditions"])
        status = {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas if self.complete else 0,
            "readyReplicas": ready,
        }
        raw = {"metadata": {"generation": 1}, "spec": {"replicas": replicas}, "status": status}
        return ClusterState(deployment=raw, pods=list(self.pods))

    def delete(self, endpoint: str, deployment: str) -> None:
        self.objects.clear()
        self.pods.clear()

    def run_pods(self, count: int, ready: bool) -> None:
        self.pods = [
            {
                "metadata": {"name": f"pod-{i}"},
                "status": {
                    "podIP": f"10.0.0.{i + 1}",
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            }
            for i in range(count)
        ]
        self.complete = ready


def spec(**changes: Any) -> OnlineDeploymentSpec:
    return OnlineDeploymentSpec(
        name="blue", endpoint_name="k8s-ep", kind=ComputeKind.kubernetes, instance_count=2
    ).model_copy(update=changes)


async def events_of(broker: NatsBroker, settings: Settings) -> list[str]:
    sub = await broker.connection.jetstream().pull_subscribe(
        f"{settings.events_subject_prefix}.>", stream=settings.events_stream
    )
    kinds = []
    for msg in await sub.fetch(100, timeout=2):
        kinds.append(json.loads(msg.data)["type"].removeprefix("sluice."))
    return kinds


async def stored(db: AsyncDatabase[Document]) -> OnlineDeploymentDoc:
    """The deployment with its instances (the provisioner's own collection)."""
    raw: Mapping[str, Any] | None = await db[ONLINE_DEPLOYMENTS].find_one({"_id": KEY})
    assert raw is not None
    listed = await db[DEPLOYMENT_INSTANCES].find_one({"_id": KEY})
    instances = from_document(DeploymentInstancesDoc, listed).instances if listed else ()
    return from_document(OnlineDeploymentDoc, raw).model_copy(update={"instances": instances})


def worker_context(
    cluster: StandInCluster,
    db: AsyncDatabase[Document],
    broker: NatsBroker,
    settings: Settings,
) -> tuple[Context, Outbox, EventPublisher]:
    """A worker's context on the Kubernetes backend over `cluster`, and its outbox."""
    publisher = EventPublisher(
        broker,
        source="sluice/provisioner",
        subject_prefix=settings.events_subject_prefix,
        stream=settings.events_stream,
    )
    outbox = Outbox(db, publisher)
    compute = KubernetesCompute(cluster, RoutingView())  # type: ignore[arg-type]
    ctx = Context(store=ProvisionerStore(db, outbox), backends={ComputeKind.kubernetes: compute})
    return ctx, outbox, publisher


async def test_kubernetes_reports_like_local_and_cleans_up(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    cluster = StandInCluster()
    ctx, outbox, publisher = worker_context(cluster, mongo_db, nats_broker, sluice_settings)
    scale = ScaleSettings(
        type="target_utilization",
        min_instances=1,
        max_instances=3,
        target_utilization_percentage=50,
    )
    doc = OnlineDeploymentDoc(spec=spec(scale_settings=scale), meta=Meta(version=1))
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(to_document(doc, KEY))
    worker = DeploymentWorker(KEY, ctx)

    await worker.converge()  # applied; no pod yet
    assert set(cluster.objects) == {
        "Deployment",
        "Service",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    }
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.provisioning

    cluster.run_pods(2, ready=True)
    await worker.converge()
    now = await stored(mongo_db)
    assert now.meta.provisioning_state is ProvisioningState.succeeded
    # Every pod is an instance: Envoy balances over both and sizes the in-flight limit by two.
    assert [(i.address, i.ready) for i in now.instances] == [
        ("10.0.0.1:5001", True),
        ("10.0.0.2:5001", True),
    ]

    # Autoscaling switched off: the autoscaler goes, the count is the spec's again.
    await mongo_db[ONLINE_DEPLOYMENTS].replace_one(
        {"_id": KEY},
        to_document(
            OnlineDeploymentDoc(
                spec=spec(instance_count=1), meta=doc.meta.model_copy(update={"version": 2})
            ),
            KEY,
        ),
    )
    cluster.complete = False
    await worker.converge()
    assert set(cluster.objects) == {"Deployment", "Service", "NetworkPolicy"}
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.updating
    cluster.run_pods(1, ready=True)
    await worker.converge()
    now = await stored(mongo_db)
    assert now.meta.provisioning_state is ProvisioningState.succeeded
    assert [i.address for i in now.instances] == ["10.0.0.1:5001"]

    # Deleted: every object goes (the autoscaler included), and the worker ends.
    await mongo_db[ONLINE_DEPLOYMENTS].delete_one({"_id": KEY})
    for _ in range(3):
        await worker.converge()
    assert worker.done
    assert cluster.objects == {}

    await OutboxRelay(outbox, publisher).drain()  # what the provisioner's relay task does
    await asyncio.sleep(0.1)
    kinds = await events_of(nats_broker, sluice_settings)
    assert kinds == [
        "deployment.provisioning",
        "instance.ready",
        "instance.ready",
        "deployment.ready",
        "deployment.updating",
        "instance.stopped",
        "deployment.ready",
        "instance.stopped",
    ]


async def test_a_deployment_deleted_and_created_again_runs_the_new_spec(
    mongo_db: AsyncDatabase[Document], nats_broker: NatsBroker, sluice_settings: Settings
) -> None:
    """Deleted and created again under the same name before the worker saw the delete: the
    new document is version 1 as the old one was, and must not be taken for it."""
    cluster = StandInCluster()
    ctx, _, _ = worker_context(cluster, mongo_db, nats_broker, sluice_settings)

    def env_of_applied() -> dict[str, str]:
        container = cluster.objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    old = OnlineDeploymentDoc(spec=spec(environment_variables={"MODEL": "old"}), meta=Meta())
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(to_document(old, KEY))
    worker = DeploymentWorker(KEY, ctx)
    await worker.converge()
    cluster.run_pods(2, ready=True)
    await worker.converge()
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.succeeded
    assert env_of_applied()["MODEL"] == "old"

    new = OnlineDeploymentDoc(spec=spec(environment_variables={"MODEL": "new"}), meta=Meta())
    assert new.meta.version == old.meta.version and new.meta.created_at != old.meta.created_at
    await mongo_db[ONLINE_DEPLOYMENTS].delete_one({"_id": KEY})
    await mongo_db[ONLINE_DEPLOYMENTS].insert_one(to_document(new, KEY))

    await worker.converge()  # the old deployment's objects go first
    assert cluster.objects == {}
    await worker.converge()  # then the new one is applied, and reported as a new one
    assert env_of_applied()["MODEL"] == "new"
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.provisioning
    cluster.run_pods(2, ready=True)
    await worker.converge()
    assert (await stored(mongo_db)).meta.provisioning_state is ProvisioningState.succeeded
    assert not worker.done
