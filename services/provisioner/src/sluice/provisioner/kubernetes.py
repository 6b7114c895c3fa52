"""Compute backend `kubernetes` (Azure's "Kubernetes online endpoints").

Each deployment becomes a Deployment (the inference server in the Sluice
image, model and code from the shared artifacts volume) and a Service in
front of it. `render` is pure and tested offline against the Kubernetes
schemas; `KubernetesBackend` applies and deletes with the official client
when a kubeconfig is configured (no cluster runs in this repository's CI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sluice.common.resources import OnlineDeploymentDoc, Probe

INFERENCE_PORT = 5001
ARTIFACTS_MOUNT = "/var/lib/sluice"
MANAGED_BY = "sluice-provisioner"
IN_CLUSTER = "in-cluster"  # SLUICE_KUBECONFIG value: use the pod's service account


def object_name(endpoint: str, deployment: str) -> str:
    """A DNS-1035 name (<= 63 chars) for the deployment's Kubernetes objects."""
    name = re.sub(r"[^a-z0-9-]", "-", f"{endpoint}-{deployment}".lower()).strip("-")
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class ClusterSettings:
    namespace: str = "sluice"
    image: str = "sluice:dev"
    artifacts_claim: str = "sluice-state"  # deploy/k8s/base/config.yaml


def _probe(path: str, probe: Probe) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": INFERENCE_PORT},
        "initialDelaySeconds": probe.initial_delay_s,
        "periodSeconds": probe.period_s,
        "timeoutSeconds": probe.timeout_s,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }


def render(doc: OnlineDeploymentDoc, cluster: ClusterSettings) -> list[dict[str, Any]]:
    """The Deployment and Service that run `doc` on a cluster."""
    spec = doc.spec
    name = object_name(spec.endpoint_name, spec.name)
    labels = {
        "app.kubernetes.io/name": "sluice-inference",
        "app.kubernetes.io/instance": name,
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
    if spec.model.artifact is not None:
        ref = spec.model.artifact
        args += ["--model", f"{ARTIFACTS_MOUNT}/artifacts/sha256/{ref.digest[7:]}/{ref.name}"]
    code = spec.code_configuration
    if code.code is not None:
        folder = f"{ARTIFACTS_MOUNT}/artifacts/sha256/{code.code.digest[7:]}/{code.code.name}"
        args += ["--code", folder, "--scoring-script", code.scoring_script]
    container: dict[str, Any] = {
        "name": "inference-server",
        "image": cluster.image,
        "args": args,
        "ports": [{"name": "http", "containerPort": INFERENCE_PORT}],
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
        "volumeMounts": [{"name": "artifacts", "mountPath": ARTIFACTS_MOUNT, "readOnly": True}],
    }
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
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            # Surge one, never drop below the requested count: updates without downtime.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "artifacts",
                            "persistentVolumeClaim": {
                                "claimName": cluster.artifacts_claim,
                                "readOnly": True,
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
        "spec": {
            "selector": {"app.kubernetes.io/instance": name},
            "ports": [{"name": "http", "port": INFERENCE_PORT, "targetPort": "http"}],
        },
    }
    objects = [deployment, service]
    scale = spec.scale_settings
    if scale.type == "target_utilization":
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
    return objects


class KubernetesBackend:
    """Applies rendered objects with the official client (server-side apply)."""

    def __init__(self, kubeconfig: str, cluster: ClusterSettings):
        from kubernetes import client, config  # imported only when a cluster is configured

        if kubeconfig == IN_CLUSTER:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self._api = client.ApiClient()
        self._apps = client.AppsV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self.cluster = cluster

    def apply(self, doc: OnlineDeploymentDoc) -> None:
        from kubernetes import dynamic

        client = dynamic.DynamicClient(self._api)  # type: ignore[no-untyped-call]
        for obj in render(doc, self.cluster):
            resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(
                body=obj,
                name=obj["metadata"]["name"],
                namespace=self.cluster.namespace,
                field_manager=MANAGED_BY,
                force_conflicts=True,
            )

    def ready_replicas(self, endpoint: str, deployment: str) -> int:
        status = self._apps.read_namespaced_deployment_status(
            object_name(endpoint, deployment), self.cluster.namespace
        ).status
        return int(status.ready_replicas or 0) if status is not None else 0

    def service_address(self, endpoint: str, deployment: str) -> str:
        name = object_name(endpoint, deployment)
        return f"{name}.{self.cluster.namespace}.svc:{INFERENCE_PORT}"

    def delete(self, endpoint: str, deployment: str) -> None:
        name = object_name(endpoint, deployment)
        self._apps.delete_namespaced_deployment(name, self.cluster.namespace)
        self._core.delete_namespaced_service(name, self.cluster.namespace)
