"""An autoscale setting on a Kubernetes cluster: a HorizontalPodAutoscaler (autoscaling/v2).

The cluster's HPA does the scaling there (as for target_utilization); this renders the
setting's *active* profile (the one the metrics service last evaluated as active, so a
schedule takes over when the provisioner re-renders after the `autoscale.scaled` event
that the profile change causes). The mapping, and where it differs from Azure's rules:

docs/autoscale.md ("Kubernetes") has the mapping table: profile min/max ->
min/maxReplicas; out-rules on CPU/memory -> `Resource` utilization targets, on other
metrics -> `External` metrics (the metrics service's Prometheus families) with `Value`
targets (`AverageValue`, the value per pod, for a rule divided per instance); steps
and cool-downs -> `behavior` policies; "out if any, in only if all" is the HPA's own
rule (the largest recommendation wins).

Differences: the HPA is proportional (desired = ceil(current x value / target)) where
Azure steps by a fixed amount; in-rules contribute their step, cool-down and window, not
their threshold (one target per metric); `to N` rules and rules that only scale in have
no HPA equivalent and are left out (`dropped` says which). External metrics need an
adapter that serves the metrics service's Prometheus families to the cluster's
external metrics API (e.g. prometheus-adapter; docs/autoscale.md).
"""

from __future__ import annotations

from typing import Any

from sluice.common.autoscale.engine import describe
from sluice.common.autoscale.model import AutoscaleProfile, AutoscaleRule, AutoscaleSetting

RESOURCE_METRICS = {"CpuUtilizationPercentage": "cpu", "CpuMemoryUtilizationPercentage": "memory"}
# The metrics service's Prometheus families (services/metrics/.../live.py, docs/metrics.md).
EXTERNAL_METRICS = {
    "RequestsPerMinute": "azureml_requests_per_minute",
    "RequestLatency": "azureml_request_latency_ms",
    "RequestLatency_P50": "azureml_request_latency_p50_ms",
    "RequestLatency_P90": "azureml_request_latency_p90_ms",
    "RequestLatency_P95": "azureml_request_latency_p95_ms",
    "RequestLatency_P99": "azureml_request_latency_p99_ms",
    "NetworkBytes": "azureml_network_bytes_per_second",
    "DeploymentCapacity": "azureml_deployment_capacity",
    "ConnectionsActive": "azureml_connections_active",
}
MAX_PERIOD_S = 1800  # the API's ceiling for a scaling policy's period


def _metric(setting: AutoscaleSetting, rule: AutoscaleRule) -> dict[str, Any]:
    if rule.metric in RESOURCE_METRICS:
        return {
            "type": "Resource",
            "resource": {
                "name": RESOURCE_METRICS[rule.metric],
                "target": {"type": "Utilization", "averageUtilization": round(rule.threshold)},
            },
        }
    endpoint = rule.metric_endpoint or setting.endpoint_name
    deployment = rule.metric_deployment if rule.metric_endpoint else setting.deployment_name
    # Divided per instance (Azure's dividePerInstance): the HPA's AverageValue target is
    # the metric divided by the number of pods.
    threshold = f"{rule.threshold:g}"
    target = (
        {"type": "AverageValue", "averageValue": threshold}
        if rule.divide_per_instance
        else {"type": "Value", "value": threshold}
    )
    return {
        "type": "External",
        "external": {
            "metric": {
                "name": EXTERNAL_METRICS[rule.metric],
                "selector": {
                    "matchLabels": {"endpoint": endpoint, "deployment": deployment or "_total"}
                },
            },
            "target": target,
        },
    }


def _policy(rule: AutoscaleRule) -> dict[str, Any]:
    period = min(MAX_PERIOD_S, max(1, round(rule.cooldown_s)))
    return {
        "type": "Percent" if rule.percent else "Pods",
        "value": rule.value,
        "periodSeconds": period,
    }


def render_hpa(
    setting: AutoscaleSetting,
    profile: AutoscaleProfile,
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
) -> tuple[dict[str, Any], list[str]]:
    """The HPA for `profile` of `setting`, and the rules it could not express."""
    outs = [r for r in profile.rules if r.scale == "out"]
    ins = [r for r in profile.rules if r.scale == "in"]
    dropped = [describe(r) for r in profile.rules if r.scale == "to"]
    metrics: list[dict[str, Any]] = []
    for rule in outs:
        metric = _metric(setting, rule)
        if metric not in metrics:
            metrics.append(metric)
    if not outs:
        dropped += [describe(r) for r in ins]
    behavior: dict[str, Any] = {}
    if outs:
        behavior["scaleUp"] = {"selectPolicy": "Max", "policies": [_policy(r) for r in outs]}
    if ins and outs:
        behavior["scaleDown"] = {
            "selectPolicy": "Min",
            "stabilizationWindowSeconds": min(3600, max(r.window_s for r in ins)),
            "policies": [_policy(r) for r in ins],
        }
    elif outs:
        behavior["scaleDown"] = {"selectPolicy": "Disabled"}  # Azure: no in-rule, no scale-in
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": max(1, profile.min_count),
        "maxReplicas": max(1, profile.max_count),
    }
    if metrics:
        spec["metrics"] = metrics
        spec["behavior"] = behavior
    else:
        # No metric rule: a fixed count (the profile's default within its bounds).
        spec["minReplicas"] = spec["maxReplicas"] = max(1, profile.default_count)
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 100},
                },
            }
        ]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                "sluice.dev/autoscale-setting": setting.name,
                "sluice.dev/autoscale-profile": profile.name,
            },
        },
        "spec": spec,
    }
    return hpa, dropped
