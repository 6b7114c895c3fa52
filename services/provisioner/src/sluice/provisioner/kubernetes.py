"""Compute backend `kubernetes` (Azure's "Kubernetes online endpoints").

Each deployment becomes a Deployment (the inference server in the Sluice
image, its own model and code mounted read-only from the shared state volume),
a Service in front of it and, under target_utilization, a HorizontalPodAutoscaler.
A pod mounts only what is its own (`subPath`s): its model's and code's artifact
folders, and, with `data_collector`, its deployment's collected-data folder,
read-write; requests are traced (to the OTLP collector) like on the local backend. `render` is
pure and tested offline against the Kubernetes schemas; `KubernetesBackend`
applies and deletes with the official client when a kubeconfig is configured
(no cluster runs in this repository's CI).

Kubernetes runs, probes and rolls the pods (surge one, never below the count);
`KubernetesDeployment` applies each spec version, reports every pod as an
instance (its IP: Envoy balances over pods and sizes the in-flight limit by
their number) and says when the rollout is complete, from the same status
fields `kubectl rollout status` reads (`pod_instances`, `rollout_complete`:
pure, tested on the API's JSON).

A rollout that cannot complete fails the version with the reason, as the local
backend fails one whose instance exits before it is ready (`rollout_failure`, pure):
a pod of the current pod template whose container crash-loops (init() raised, or
OOMKilled), cannot pull its image or cannot be created, or a Deployment past its
progress deadline. The message names the pod, the reason and exit code and ends
with the crashed container's last log lines. Kubernetes keeps the previous pods
of a failed update running (maxUnavailable 0): they stay instances and serve, as
the local backend's previous version does. `get-logs` reads a pod's log
(`KubernetesBackend.instance_log`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.common import gateway_auth
from sluice.common.access import with_log_tail
from sluice.common.autoscale.model import AutoscaleProfile, AutoscaleSetting
from sluice.common.collected import collected_dir, collector_argv
from sluice.common.log import get_logger, readable_log
from sluice.common.resources import (
    ArtifactRef,
    Instance,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    Probe,
)
from sluice.common.tracing import otlp_port
from sluice.provisioner.autoscale_counts import AutoscaleCounts
from sluice.provisioner.compute import Observation
from sluice.provisioner.kubernetes_autoscale import render_hpa
from sluice.provisioner.local_deployment import LOG_LINES_IN_ERRORS
from sluice.provisioner.routing import ROUTE_WAIT_S, RoutingView

log = get_logger(__name__)

INFERENCE_PORT = 5001
STATE_MOUNT = "/var/lib/sluice"  # in the pod: its model, code and collected data below
MANAGED_BY = "sluice-provisioner"
RUN_AS = 10001  # an unprivileged uid/gid for deployment code (no root in the image needed)
GATEWAY_LABEL = "app.kubernetes.io/name"  # = "envoy" on the gateway's pods
INSTANCE_LABEL = "app.kubernetes.io/instance"
CONTAINER = "inference-server"
# On the pod template, and so on each pod made from it: a digest of the template, which tells
# the pods of the current spec from the previous one's during (and after) a rolling update.
TEMPLATE_ANNOTATION = "sluice.dev/pod-template"
IN_CLUSTER = "in-cluster"  # SLUICE_KUBECONFIG value: use the pod's service account
NO_CLUSTER = (
    "this is a kubernetes deployment, but the provisioner has no cluster: set "
    "SLUICE_KUBECONFIG (and SLUICE_KUBERNETES_NAMESPACE / _IMAGE) and restart it"
)


def object_name(endpoint: str, deployment: str) -> str:
    """A DNS-1035 name (<= 63 chars) for the deployment's Kubernetes objects."""
    name = re.sub(r"[^a-z0-9-]", "-", f"{endpoint}-{deployment}".lower()).strip("-")
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class ClusterSettings:
    namespace: str = "sluice"
    image: str = "sluice:dev"
    artifacts_claim: str = "sluice-state"  # deploy/k8s/base/config.yaml
    collector_max_bytes: int = 1024**3  # SLUICE_DATA_COLLECTOR_MAX_BYTES
    # Request tracing (SLUICE_TRACING__*): pods export over OTLP, they have no trace files.
    tracing: bool = False
    trace_sampling_ratio: float = 0.01
    otlp_endpoint: str | None = None


def template_digest(template: Mapping[str, Any]) -> str:
    """A digest of a pod template: equal templates, equal digests, so a version that changes
    only the count does not roll the pods."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _artifact_mount(ref: ArtifactRef, mount: str) -> tuple[str, dict[str, Any]]:
    """The artifact's path in the pod, and the read-only mount of its folder alone."""
    digest_folder = f"artifacts/sha256/{ref.digest.removeprefix('sha256:')}"
    volume = {"name": "state", "mountPath": mount, "subPath": digest_folder, "readOnly": True}
    return f"{mount}/{ref.name}", volume


def _probe(path: str, probe: Probe) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": INFERENCE_PORT},
        "initialDelaySeconds": probe.initial_delay_s,
        "periodSeconds": probe.period_s,
        "timeoutSeconds": probe.timeout_s,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }


def render(
    doc: OnlineDeploymentDoc,
    cluster: ClusterSettings,
    gateway_secret: str | None = None,
    autoscale: tuple[AutoscaleSetting, AutoscaleProfile] | None = None,
) -> list[dict[str, Any]]:
    """The Deployment and Service that run `doc` on a cluster.

    Locked down beyond the local backend's isolation (isolation.py): the pod runs as a
    non-root user with no privilege escalation, every capability dropped, a read-only root
    filesystem (scratch space in an emptyDir at /tmp), no service-account token and no
    service-link variables naming the platform's services; a NetworkPolicy lets only the
    gateway's pods reach it (and, with `egress_public_network_access: disabled`, lets it
    reach nothing but the trace collector); with `gateway_secret` a Secret of its own
    carries that secret (sluice.common.gateway_auth) to the inference server. An autoscale setting
    (`autoscale`: it and its active profile) becomes the HorizontalPodAutoscaler
    (kubernetes_autoscale.py), in place of target_utilization's."""
    spec = doc.spec
    name = object_name(spec.endpoint_name, spec.name)
    labels = {
        "app.kubernetes.io/name": "sluice-inference",
        INSTANCE_LABEL: name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "sluice.dev/endpoint": spec.endpoint_name,
        "sluice.dev/deployment": spec.name,
    }
    rs = spec.request_settings
    args = [
        "sluice.inference",
        "--host", "0.0.0.0",  # noqa: S104 - inside a pod the server must listen on the pod IP
        "--port", str(INFERENCE_PORT),
        "--max-concurrent-requests", str(rs.max_concurrent_requests_per_instance),
        "--request-timeout-ms", str(rs.request_timeout_ms),
        "--log-format", "json",
    ]  # fmt: skip
    mounts: list[dict[str, Any]] = []
    if spec.model.artifact is not None:
        path, mount = _artifact_mount(spec.model.artifact, f"{STATE_MOUNT}/model")
        args += ["--model", path]
        mounts.append(mount)
    code = spec.code_configuration
    if code.code is not None:
        path, mount = _artifact_mount(code.code, f"{STATE_MOUNT}/code")
        args += ["--code", path, "--scoring-script", code.scoring_script]
        mounts.append(mount)
    if spec.data_collector.enabled:
        folder = collected_dir(Path(), spec.endpoint_name, spec.name)  # relative to the volume
        mounts.append(
            {"name": "state", "mountPath": f"{STATE_MOUNT}/collected", "subPath": str(folder)}
        )
        args += collector_argv(spec, f"{STATE_MOUNT}/collected", cluster.collector_max_bytes)
    if (cluster.tracing or spec.app_insights_enabled) and cluster.otlp_endpoint:
        args += [
            "--trace-sampling-ratio", repr(cluster.trace_sampling_ratio),
            "--trace-otlp-endpoint", cluster.otlp_endpoint,
        ]  # fmt: skip
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": cluster.image,
        "args": args,
        "ports": [
            {"name": "http", "containerPort": INFERENCE_PORT},
        ],
        "env": [
            {"name": k, "value": v}
            for k, v in sorted(
                {
                    **spec.environment_variables,
                    "AZUREML_ENDPOINT_NAME": spec.endpoint_name,
                    "AZUREML_DEPLOYMENT_NAME": spec.name,
                }.items()
            )
        ],
        "readinessProbe": _probe("/ready", spec.readiness_probe),
        "livenessProbe": _probe("/", spec.liveness_probe),
        "volumeMounts": [
            *mounts,
            {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    container["env"] += [{"name": "HOME", "value": "/tmp"}]  # noqa: S108
    secret_name = f"{name}-gateway"
    if gateway_secret:
        container["env"].append(
            {
                "name": gateway_auth.ENV,
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "secret"}},
            }
        )
    resources = {k: v for k, v in spec.resources.model_dump().items() if v}
    if resources:
        container["resources"] = resources
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": labels,
            "annotations": {"sluice.dev/spec-version": str(doc.meta.version)},
        },
        "spec": {
            "replicas": spec.instance_count,
            "selector": {"matchLabels": {INSTANCE_LABEL: name}},
            # Surge one, never drop below the requested count: updates without downtime.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumes": [
                        {
                            "name": "state",
                            "persistentVolumeClaim": {
                                "claimName": cluster.artifacts_claim,
                                # Read-only unless the pod collects data (its own folder).
                                "readOnly": not spec.data_collector.enabled,
                            },
                        },
                        {"name": "scratch", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"] = {TEMPLATE_ANNOTATION: template_digest(template)}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
        "spec": {
            "selector": {INSTANCE_LABEL: name},
            "ports": [{"name": "http", "port": INFERENCE_PORT, "targetPort": "http"}],
        },
    }
    policy: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": {INSTANCE_LABEL: name}},
            "policyTypes": ["Ingress"],
            # Only the gateway (deploy/k8s/base/envoy.yaml) reaches the inference server;
            # the kubelet's probes are not subject to network policies.
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {GATEWAY_LABEL: "envoy"}}}],
                    "ports": [{"protocol": "TCP", "port": INFERENCE_PORT}],
                }
            ],
        },
    }
    if spec.egress_disabled:
        policy["spec"]["policyTypes"].append("Egress")
        policy["spec"]["egress"] = _egress_rules(cluster, spec)
    objects = [deployment, service, policy]
    scale = spec.scale_settings
    if autoscale is not None:
        hpa, dropped = render_hpa(*autoscale, name=name, namespace=cluster.namespace, labels=labels)
        if dropped:
            log.warning("autoscale_rules_not_rendered", deployment=name, rules=dropped)
        objects.append(hpa)
        del deployment["spec"]["replicas"]  # the autoscaler owns the replica count
    elif scale.type == "target_utilization":
        # Azure's kubernetes target_utilization is a CPU target: the cluster's HPA does it.
        objects.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": max(1, scale.min_instances),
                    "maxReplicas": scale.max_instances,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {
                                    "type": "Utilization",
                                    "averageUtilization": scale.target_utilization_percentage,
                                },
                            },
                        }
                    ],
                },
            }
        )
        # The autoscaler owns the replica count from now on.
        del deployment["spec"]["replicas"]
    if gateway_secret:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": cluster.namespace, "labels": labels},
                "type": "Opaque",
                "stringData": {"secret": gateway_secret},
            }
        )
    return objects


@dataclass(frozen=True)
class KubernetesApis:
    """The official client's objects the backend calls (`connect`); offline tests pass
    stand-ins, since no API server runs here."""

    client: Any  # ApiClient: an answer as the API's JSON (sanitize_for_serialization)
    apps: Any  # AppsV1Api
    core: Any  # CoreV1Api
    autoscaling: Any  # AutoscalingV2Api
    networking: Any  # NetworkingV1Api
    # Makes a DynamicClient (server-side apply of any kind); it reads the API server's
    # discovery when made, so it is made when applying, not when the provisioner starts.
    dynamic: Callable[[], Any]


def connect(kubeconfig: str) -> KubernetesApis:
    """The official client for `kubeconfig` (a file, or IN_CLUSTER: the pod's account)."""
    from kubernetes import client, config, dynamic  # imported only when a cluster is configured

    if kubeconfig == IN_CLUSTER:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    api = client.ApiClient()

    def dynamic_client() -> Any:
        return dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]

    return KubernetesApis(
        client=api,
        apps=client.AppsV1Api(api),
        core=client.CoreV1Api(api),
        autoscaling=client.AutoscalingV2Api(api),
        networking=client.NetworkingV1Api(api),
        dynamic=dynamic_client,
    )


class NoInstance(LookupError):
    """No pod of the deployment is the one asked for (the message says which there are)."""


class ClusterError(RuntimeError):
    """The API server refused a read, or could not be reached (the message says why)."""


class KubernetesBackend:
    """Applies rendered objects with the official client (server-side apply)."""

    def __init__(
        self,
        apis: KubernetesApis,
        cluster: ClusterSettings,
        secret_key: str | None = None,
        state_dir: Path | None = None,
    ):
        self._api = apis.client
        self._apps = apis.apps
        self._core = apis.core
        self._autoscaling = apis.autoscaling
        self._networking = apis.networking
        self._dynamic = apis.dynamic
        self.cluster = cluster
        self._secret_key = secret_key  # derives each deployment's gateway secret
        self._state_dir = state_dir  # the shared state volume, as this process mounts it

    def apply(
        self,
        doc: OnlineDeploymentDoc,
        autoscale: tuple[AutoscaleSetting, AutoscaleProfile] | None = None,
    ) -> None:
        client = self._dynamic()
        secret = None
        if self._secret_key:
            secret = gateway_auth.secret_for(
                self._secret_key, doc.spec.endpoint_name, doc.spec.name
            )
        if doc.spec.data_collector.enabled and self._state_dir is not None:
            # Made by us (the pods' uid) before a pod mounts it: a missing subPath would be
            # created by the kubelet, as root, and the pod could not write to it.
            folder = collected_dir(self._state_dir, doc.spec.endpoint_name, doc.spec.name)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        objects = render(doc, self.cluster, secret, autoscale)
        if not any(obj["kind"] == "HorizontalPodAutoscaler" for obj in objects):
            # No longer autoscaled: the replica count is ours again.
            self._ignore_missing(
                self._autoscaling.delete_namespaced_horizontal_pod_autoscaler,
                objects[0]["metadata"]["name"],
            )
        for obj in sorted(objects, key=lambda o: o["kind"] != "Secret"):  # before its pods
            resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                namespace=self.cluster.namespace,
                field_manager=MANAGED_BY,
                force_conflicts=True,
            )

    def state(self, endpoint: str, deployment: str) -> ClusterState:
        """The Deployment's status and its pods, as the API's JSON."""
        name = object_name(endpoint, deployment)
        raw = self._apps.read_namespaced_deployment(name, self.cluster.namespace)
        as_json = self._api.sanitize_for_serialization  # the API's own JSON (camelCase)
        return ClusterState(deployment=as_json(raw), pods=self.pods(endpoint, deployment))

    def pods(self, endpoint: str, deployment: str) -> list[Mapping[str, Any]]:
        """The deployment's pods (terminating ones too), as the API's JSON."""
        name = object_name(endpoint, deployment)
        pods = self._core.list_namespaced_pod(
            self.cluster.namespace, label_selector=f"{INSTANCE_LABEL}={name}"
        )
        items: list[Mapping[str, Any]] = self._api.sanitize_for_serialization(pods).get("items", [])
        return items

    def pod_log(self, pod: str, lines: int, previous: bool = False) -> str:
        """The last `lines` lines of the inference server's log in `pod`; `previous`: of
        the container that ran before the current one (the one that crashed)."""
        text: str = self._core.read_namespaced_pod_log(
            pod,
            self.cluster.namespace,
            container=CONTAINER,
            previous=previous,
            tail_lines=lines,
        )
        return text

    def instance_log(
        self, endpoint: str, deployment: str, lines: int, instance_id: str = ""
    ) -> tuple[str, str]:
        """`get-logs`: (pod, its last `lines` lines) of pod `instance_id`, or of the newest
        pod. Raises NoInstance when there is no such pod, ClusterError when the API server
        does not give the log (e.g. its container is waiting for its image)."""
        try:
            pod = log_pod(self.pods(endpoint, deployment), instance_id)
            return pod, self.pod_log(pod, lines)
        except NoInstance:
            raise
        except Exception as exc:  # the API server's answer (or its absence) is what to show
            raise ClusterError(cluster_message(exc)) from exc

    def delete(self, endpoint: str, deployment: str) -> None:
        """Every object `render` can make for the deployment (gone already is fine)."""
        name = object_name(endpoint, deployment)
        self._ignore_missing(self._autoscaling.delete_namespaced_horizontal_pod_autoscaler, name)
        self._ignore_missing(self._apps.delete_namespaced_deployment, name)
        self._ignore_missing(self._core.delete_namespaced_service, name)
        self._ignore_missing(self._networking.delete_namespaced_network_policy, name)
        self._ignore_missing(self._core.delete_namespaced_secret, f"{name}-gateway")

    def _ignore_missing(self, call: Any, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            call(name, self.cluster.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


@dataclass(frozen=True)
class ClusterState:
    deployment: Mapping[str, Any]
    pods: list[Mapping[str, Any]]


def pod_instances(pods: list[Mapping[str, Any]]) -> list[Instance]:
    """Pods with an IP that are not terminating, as instances (ready = the Ready condition)."""
    instances = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        ip = status.get("podIP")
        if not ip or meta.get("deletionTimestamp"):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        instances.append(
            Instance(
                id=meta["name"],
                address=f"{host}:{INFERENCE_PORT}",
                ready=_pod_ready(pod),
            )
        )
    return sorted(instances, key=lambda i: i.id)


def rollout_complete(deployment: Mapping[str, Any]) -> bool:
    """`kubectl rollout status`'s rule: the controller saw the latest spec, every replica
    runs it, none of the old ones is left, and they are all ready."""
    meta, spec, status = (deployment.get(k, {}) for k in ("metadata", "spec", "status"))
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    return bool(
        status.get("observedGeneration", 0) >= meta.get("generation", 1)
        and updated >= wanted
        and status.get("replicas", 0) == updated
        and status.get("readyReplicas", 0) >= updated
    )


# A container waiting for one of these will not start without a change: its image cannot be
# had, or its container cannot be made (ContainerCreating, PodInitializing: starting normally).
# Not ErrImagePull: a first failed pull (a registry's rate limit) is retried by the kubelet,
# which says ImagePullBackOff once it keeps failing.
CANNOT_START = {
    "ImagePullBackOff": "cannot pull its image",
    "InvalidImageName": "cannot pull its image",
    "ErrImageNeverPull": "cannot pull its image",
    "CreateContainerConfigError": "cannot create its container",
    "CreateContainerError": "cannot create its container",
    "RunContainerError": "cannot start its container",
}
# A container that is terminated again after this many restarts crash-loops, even before the
# kubelet says CrashLoopBackOff (it says so once a run ends within its back-off, 10 s doubling
# per restart: an init() that takes 30 s to raise restarts three times first). One exit is
# not enough: a pod that served for days and was OOMKilled once is restarted, not a failure.
RESTARTS_BEFORE_FAILED = 2
DEFAULT_PROGRESS_DEADLINE_S = 600  # the Deployment's progressDeadlineSeconds when unset


@dataclass(frozen=True)
class RolloutFailure:
    """Why the current rollout cannot complete, and whose log tells more."""

    message: str
    pod: str | None = None  # the pod whose log to show (None: no container of it ran)
    previous: bool = False  # that log is its previous container's (the one that crashed)


def rollout_failure(
    deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> RolloutFailure | None:
    """Why the Deployment's current pod template cannot roll out (None: nothing failed, or
    not yet), from the API's JSON: a not-ready pod of that template (TEMPLATE_ANNOTATION)
    whose container crash-loops, cannot pull its image or cannot be created; else the
    Deployment's Progressing condition at ProgressDeadlineExceeded. Pods of an earlier
    template (an update's old pods, a failed version's) are not looked at."""
    template = _digest(deployment.get("spec", {}).get("template", {}))
    current = [p for p in pods if _digest(p) == template and not _terminating(p)]
    for pod in sorted(current, key=_name):
        if _pod_ready(pod):
            continue
        for status in pod.get("status", {}).get("containerStatuses") or []:
            failure = _container_failure(_name(pod), status)
            if failure is not None:
                return failure
    return _deadline_failure(deployment, current)


def _container_failure(pod: str, status: Mapping[str, Any]) -> RolloutFailure | None:
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason", "")
    if reason in CANNOT_START:
        detail = f": {waiting['message']}" if waiting.get("message") else ""
        return RolloutFailure(f"instance {pod} {CANNOT_START[reason]} ({reason}){detail}.")
    restarts = status.get("restartCount", 0)
    now = state.get("terminated")  # exited, not restarted yet
    last = now or (status.get("lastState") or {}).get("terminated")
    looping = reason == "CrashLoopBackOff" or bool(now and restarts >= RESTARTS_BEFORE_FAILED)
    if not looping or not last:
        return None
    code = last.get("exitCode")
    if last.get("reason") == "OOMKilled":
        what = (
            f"was killed for using more memory than its limit (OOMKilled, exit code {code}) "
            "before it was ready"
        )
    else:
        what = f"exited with code {code} before it was ready (init() failed?)"
    times = "once" if restarts == 1 else f"{restarts} times"
    message = f"instance {pod} {what}; Kubernetes restarted it {times} ({reason or 'terminated'})."
    if last.get("message"):  # what the container wrote to its termination-message file
        message += f" Termination message: {str(last['message']).strip()}"
    return RolloutFailure(message, pod=pod, previous=now is None)


def _deadline_failure(
    deployment: Mapping[str, Any], current: Sequence[Mapping[str, Any]]
) -> RolloutFailure | None:
    meta, spec, status = (deployment.get(k, {}) for k in ("metadata", "spec", "status"))
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return None  # the conditions are still those of an earlier spec
    stalled = [
        c
        for c in status.get("conditions") or []
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
    ]
    if not stalled:
        return None
    seconds = spec.get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE_S)
    said = str(stalled[0].get("message", "")).rstrip(".")
    lines = [f"the rollout made no progress for {seconds} s (ProgressDeadlineExceeded: {said})."]
    waiting = sorted((p for p in current if not _pod_ready(p)), key=_name)
    lines += [f"instance {_name(p)} {_not_ready_because(p)}." for p in waiting]
    running = [p for p in waiting if p.get("status", {}).get("phase") == "Running"]
    return RolloutFailure(" ".join(lines), pod=_name(running[0]) if running else None)


def _not_ready_because(pod: Mapping[str, Any]) -> str:
    """Why a pod past the deadline is not ready: not scheduled (the scheduler says why), its
    container still waiting (e.g. for a volume), or its readiness probe (GET /ready: init()
    has not returned) never passed."""
    status = pod.get("status", {})
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = condition.get("message") or condition.get("reason", "")
            return f"is not scheduled: {why}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"is waiting ({waiting['reason']}){detail}"
    return "never became ready (its readiness probe, GET /ready, did not pass)"


def _digest(obj: Mapping[str, Any]) -> Any:
    """The template digest a pod, or a pod template, carries (None: none)."""
    return (obj.get("metadata", {}).get("annotations") or {}).get(TEMPLATE_ANNOTATION)


def _name(pod: Mapping[str, Any]) -> str:
    return str(pod.get("metadata", {}).get("name", ""))


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def log_pod(pods: Sequence[Mapping[str, Any]], instance_id: str = "") -> str:
    """The pod whose log `get-logs` shows: `instance_id` (a pod's name, as `pod_instances`
    reports it), or the newest pod."""
    by_age = sorted(
        pods, key=lambda p: (p.get("metadata", {}).get("creationTimestamp", ""), _name(p))
    )
    names = [_name(p) for p in by_age]
    if not names:
        raise NoInstance("no pod of this deployment exists")
    if not instance_id:
        return names[-1]
    if instance_id not in names:
        raise NoInstance(
            f"no pod {instance_id!r} in this deployment; its pods (oldest first): "
            f"{', '.join(names)}"
        )
    return instance_id


def cluster_message(exc: Exception) -> str:
    """What the API server said (its Status' message), else the error itself."""
    try:
        return str(json.loads(getattr(exc, "body", None) or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class KubernetesDeployment:
    """One deployment on a cluster (the DeploymentCompute protocol)."""

    def __init__(
        self,
        key: str,
        backend: KubernetesBackend | None,
        routing: RoutingView,
        autoscale: AutoscaleCounts | None = None,
    ):
        self.key = key
        self.endpoint, _, self.name = key.partition("/")
        self._backend = backend
        self._routing = routing
        self._autoscale = autoscale
        # (spec version, autoscale setting marker) of what was applied last
        self._applied: tuple[int, str] | None = None
        # (spec version, why): it could not be applied / its rollout failed. Either stays
        # the version's verdict, as on the local backend.
        self._apply_failed: tuple[int, str] | None = None
        self._rollout_failed: tuple[int, str] | None = None
        # The spec version whose rollout completed: its later pod trouble (a scale-up pod
        # that cannot pull, an OOMKill days later) is Kubernetes' to restart, not a verdict.
        self._rolled_out: int | None = None
        self._instances: list[Instance] = []
        self._removing_since: float | None = None

    async def converge(self, doc: OnlineDeploymentDoc) -> Observation:
        version = doc.meta.version
        if self._backend is None:
            return Observation(failure=NO_CLUSTER)
        if self._apply_failed is not None and self._apply_failed[0] == version:
            return Observation(instances=self._instances, failure=self._apply_failed[1])
        active = self._autoscale.active(self.key) if self._autoscale else None
        marker = (version, active[2] if active else "")
        if self._applied != marker:
            try:
                autoscale = (active[0], active[1]) if active else None
                await asyncio.to_thread(self._backend.apply, doc, autoscale)
            except Exception as exc:  # the API server's answer is the reason to show
                self._apply_failed = (version, f"applying to the cluster failed: {exc}")
                log.error("kubernetes_apply_failed", deployment=self.key, error=str(exc))
                return Observation(instances=self._instances, failure=self._apply_failed[1])
            self._applied = marker
        state = await asyncio.to_thread(self._backend.state, self.endpoint, self.name)
        seen = self._observed(state)
        seen.failure = await self._failure(version, state)
        if seen.failure is not None:
            seen.busy = False  # a failed rollout changes only when the spec does
        elif seen.settled:
            self._rolled_out = version
        return seen

    async def _failure(self, version: int, state: ClusterState) -> str | None:
        """Why `version`'s rollout failed, with the failed pod's last log lines (None: it
        did not). Found once: the pods still there keep being observed, the verdict stays."""
        if self._rollout_failed is not None and self._rollout_failed[0] == version:
            return self._rollout_failed[1]
        if self._rolled_out == version:
            return None
        failure = rollout_failure(state.deployment, state.pods)
        if failure is None:
            return None
        message = failure.message
        if failure.pod is not None:
            message = with_log_tail(message, await self._last_lines(failure.pod, failure.previous))
        self._rollout_failed = (version, message)
        log.error("deployment_failed", deployment=self.key, version=version, reason=failure.message)
        return message

    async def _last_lines(self, pod: str, previous: bool) -> str:
        assert self._backend is not None
        try:
            text = await asyncio.to_thread(
                self._backend.pod_log, pod, LOG_LINES_IN_ERRORS, previous
            )
        except Exception as exc:  # the failure is still worth reporting without its log
            return f"(the log of {pod} could not be read: {cluster_message(exc)})"
        return readable_log(text)

    def _observed(self, state: ClusterState) -> Observation:
        before = {i.id: i for i in self._instances}
        now = pod_instances(state.pods)
        seen = Observation(instances=now, settled=rollout_complete(state.deployment))
        seen.became_ready = [
            i for i in now if i.ready and not (i.id in before and before[i.id].ready)
        ]
        ids = {i.id for i in now}
        seen.stopped = [(i, "pod gone") for i in before if i not in ids]
        seen.busy = not seen.settled
        self._instances = now
        return seen

    async def remove(self) -> Observation:
        """Out of routing first (an empty instance list), then the objects go."""
        if self._backend is None or (self._applied is None and not self._instances):
            return Observation()
        now = time.monotonic()
        if self._removing_since is None:
            self._removing_since = now
        if self._routing.knows(self.key) and now - self._removing_since < ROUTE_WAIT_S:
            return Observation(busy=True)  # the gateway still routes the deployment
        await asyncio.to_thread(self._backend.delete, self.endpoint, self.name)
        stopped = [(i.id, "deployment deleted") for i in self._instances]
        self._applied, self._instances = None, []
        return Observation(stopped=stopped)

    async def stop_now(self, reason: str) -> None:
        """Pods outlive the provisioner: nothing to stop."""


class KubernetesCompute:
    """The kubernetes compute backend (ComputeBackend): one KubernetesDeployment each.
    Without a cluster configured, every kubernetes deployment fails saying so."""

    def __init__(
        self,
        backend: KubernetesBackend | None,
        routing: RoutingView,
        autoscale: AutoscaleCounts | None = None,
    ):
        self._backend = backend
        self._routing = routing
        self._autoscale = autoscale

    def deployment(self, key: str) -> KubernetesDeployment:
        return KubernetesDeployment(key, self._backend, self._routing, self._autoscale)

    async def recover(self) -> list[str]:
        """Nothing to take over: the cluster keeps the pods running and the resync finds
        their deployments."""
        return []


def _egress_rules(cluster: ClusterSettings, spec: OnlineDeploymentSpec) -> list[dict[str, Any]]:
    """Where a pod with `egress_public_network_access: disabled` may connect: nowhere, or,
    when it exports spans, the OTLP collector's port and DNS to find it."""
    if not ((cluster.tracing or spec.app_insights_enabled) and cluster.otlp_endpoint):
        return []
    return [
        {
            "ports": [
                {"protocol": "TCP", "port": otlp_port(cluster.otlp_endpoint)},
                {"protocol": "UDP", "port": 53},
                {"protocol": "TCP", "port": 53},
            ]
        }
    ]
