"""Autoscale settings rendered as HorizontalPodAutoscalers, checked offline against the
Kubernetes schemas (strict): metric rules, steps and cool-downs, the active profile's
bounds, endpoint metric sources, what cannot be expressed."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.autoscale.model import (
    DEPLOYMENT_METRICS,
    ENDPOINT_METRICS,
    AutoscaleProfile,
    AutoscaleRecurrence,
    AutoscaleRule,
    AutoscaleSetting,
    validate,
)
from sluice.common.mongo import Document
from sluice.common.resources import ComputeKind, Meta, OnlineDeploymentDoc, OnlineDeploymentSpec
from sluice.provisioner.autoscale_counts import AUTOSCALE_SETTINGS, AutoscaleCounts
from sluice.provisioner.kubernetes import ClusterSettings, ClusterState, KubernetesCompute, render
from sluice.provisioner.kubernetes_autoscale import (
    EXTERNAL_METRICS,
    RESOURCE_METRICS,
    render_hpa,
)
from sluice.provisioner.routing import RoutingView


def doc() -> OnlineDeploymentDoc:
    spec = OnlineDeploymentSpec(
        name="blue", endpoint_name="K8s_Endpoint", kind=ComputeKind.kubernetes, instance_count=3
    )
    return OnlineDeploymentDoc(spec=spec, meta=Meta(version=4))


CPU_OUT = AutoscaleRule(
    metric="CpuUtilizationPercentage", threshold=70, scale="out", value=2, cooldown_s=300
)
CPU_IN = AutoscaleRule(
    metric="CpuUtilizationPercentage",
    operator="<",
    threshold=25,
    scale="in",
    value=1,
    window_s=600,
    cooldown_s=600,
)
LATENCY_OUT = AutoscaleRule(
    metric="RequestLatency_P99",
    threshold=250,
    scale="out",
    value=50,
    percent=True,
    metric_endpoint="K8s_Endpoint",
    cooldown_s=120,
)
PINNED = AutoscaleRule(metric="RequestsPerMinute", threshold=1000, scale="to", value=4)


def setting() -> AutoscaleSetting:
    return validate(
        AutoscaleSetting(
            name="k8s",
            endpoint_name="K8s_Endpoint",
            deployment_name="blue",
            profiles=[
                AutoscaleProfile(
                    name="default",
                    min_count=2,
                    default_count=2,
                    max_count=8,
                    rules=[CPU_OUT, CPU_IN, LATENCY_OUT, PINNED],
                ),
                AutoscaleProfile(
                    name="weekend",
                    min_count=1,
                    default_count=1,
                    max_count=1,
                    recurrence=AutoscaleRecurrence(days=["sat", "sun"]),
                ),
            ],
        )
    )


def valid(obj: dict[str, object]) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_metric_rules_become_hpa_metrics_and_behavior() -> None:
    s = setting()
    objects = render(doc(), ClusterSettings(), "fake-gateway-secret", (s, s.profiles[0]))
    for obj in objects:
        valid(obj)
    kinds = {o["kind"]: o for o in objects}
    assert "replicas" not in kinds["Deployment"]["spec"]
    spec = kinds["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 8)
    cpu, latency = spec["metrics"]
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert latency["external"] == {
        "metric": {
            "name": "azureml_request_latency_p99_ms",
            "selector": {"matchLabels": {"endpoint": "K8s_Endpoint", "deployment": "_total"}},
        },
        "target": {"type": "Value", "value": "250"},
    }
    assert spec["behavior"]["scaleUp"] == {
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 2, "periodSeconds": 300},
            {"type": "Percent", "value": 50, "periodSeconds": 120},
        ],
    }
    assert spec["behavior"]["scaleDown"] == {
        "selectPolicy": "Min",
        "stabilizationWindowSeconds": 600,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}],
    }


def test_requests_per_instance_is_an_average_value_per_pod() -> None:
    """Azure's dividePerInstance: the HPA's AverageValue target divides by the pods."""
    per_pod = AutoscaleRule(metric="RequestsPerMinute", threshold=300, divide_per_instance=True)
    s = setting()
    s.profiles[0].rules = [per_pod]
    objects = render(doc(), ClusterSettings(), "fake-gateway-secret", (s, s.profiles[0]))
    for obj in objects:
        valid(obj)
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    (requests,) = hpa["spec"]["metrics"]
    assert requests["external"] == {
        "metric": {
            "name": "azureml_requests_per_minute",
            "selector": {"matchLabels": {"endpoint": "K8s_Endpoint", "deployment": "blue"}},
        },
        "target": {"type": "AverageValue", "averageValue": "300"},
    }


def test_every_metric_a_rule_can_watch_has_an_hpa_metric() -> None:
    watchable = set(DEPLOYMENT_METRICS) | set(ENDPOINT_METRICS)
    assert watchable <= RESOURCE_METRICS.keys() | EXTERNAL_METRICS.keys()


def test_what_an_hpa_cannot_express_is_reported() -> None:
    s = setting()
    _, dropped = render_hpa(s, s.profiles[0], name="x", namespace="sluice", labels={})
    assert dropped == ["RequestsPerMinute > 1000 avg 5m -> to 4"]


def test_a_schedule_profile_without_rules_is_a_fixed_count() -> None:
    s = setting()
    hpa, dropped = render_hpa(s, s.profiles[1], name="x", namespace="sluice", labels={})
    valid(hpa)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"], dropped) == (1, 1, [])
    assert hpa["metadata"]["annotations"]["sluice.dev/autoscale-profile"] == "weekend"


def test_out_rules_only_never_scale_in() -> None:
    s = setting()
    only_out = s.profiles[0].model_copy(update={"rules": [CPU_OUT]})
    hpa, _ = render_hpa(s, only_out, name="x", namespace="sluice", labels={})
    valid(hpa)
    assert hpa["spec"]["behavior"]["scaleDown"] == {"selectPolicy": "Disabled"}


class Recorder:
    """The API server's side of KubernetesBackend: what was applied, with what setting."""

    def __init__(self) -> None:
        self.applied: list[list[dict[str, Any]]] = []

    def apply(self, d: OnlineDeploymentDoc, autoscale: Any = None) -> None:
        self.applied.append(render(d, ClusterSettings(), None, autoscale))

    def state(self, endpoint: str, deployment: str) -> ClusterState:
        return ClusterState(deployment={}, pods=[])


async def test_the_cluster_follows_the_setting_and_its_active_profile(
    mongo_db: AsyncDatabase[Document],
) -> None:
    s = setting()
    await mongo_db[AUTOSCALE_SETTINGS].insert_one(
        {
            "_id": "k8s",
            "target": "k8s_endpoint/blue",
            "spec": s.model_dump(),
            "version": 1,
            "state": {"capacity": 2, "active_profile": "default"},
        }
    )
    counts = AutoscaleCounts(mongo_db)
    await counts.load()
    cluster = Recorder()
    compute = KubernetesCompute(cluster, RoutingView(), counts)  # type: ignore[arg-type]
    deployment = compute.deployment("K8s_Endpoint/blue")

    def hpa() -> dict[str, Any] | None:
        return next(
            (o for o in cluster.applied[-1] if o["kind"] == "HorizontalPodAutoscaler"), None
        )

    await deployment.converge(doc())
    assert (hpa() or {})["metadata"]["annotations"]["sluice.dev/autoscale-profile"] == "default"
    await deployment.converge(doc())
    assert len(cluster.applied) == 1  # nothing changed: nothing applied again

    # The weekend profile becomes active (the metrics service's decision), then it is off.
    await mongo_db[AUTOSCALE_SETTINGS].update_one(
        {"_id": "k8s"}, {"$set": {"state.active_profile": "weekend", "version": 2}}
    )
    await counts.refresh("K8s_Endpoint", "blue")
    await deployment.converge(doc())
    assert (hpa() or {})["metadata"]["annotations"]["sluice.dev/autoscale-profile"] == "weekend"
    await mongo_db[AUTOSCALE_SETTINGS].update_one(
        {"_id": "k8s"}, {"$set": {"spec.enabled": False, "version": 3}}
    )
    await counts.refresh("K8s_Endpoint", "blue")
    await deployment.converge(doc())
    assert hpa() is None and len(cluster.applied) == 3
