"""Rendered Kubernetes objects for kubernetes online deployments, checked offline against the
Kubernetes schemas (no cluster runs here; applying them is the official client's job)."""

from __future__ import annotations

import kubernetes_validate

from sluice.common.resources import (
    ArtifactRef,
    CodeConfiguration,
    ComputeKind,
    Meta,
    ModelRef,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    ResourceRequirements,
)
from sluice.provisioner.kubernetes import ClusterSettings, object_name, render

DIGEST = "sha256:" + "ab" * 32


def doc(**changes: object) -> OnlineDeploymentDoc:
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="K8s_Endpoint",
        kind=ComputeKind.kubernetes,
        model=ModelRef(artifact=ArtifactRef(digest=DIGEST, name="model", is_directory=True)),
        code_configuration=CodeConfiguration(
            code=ArtifactRef(digest=DIGEST, name="onlinescoring", is_directory=True),
            scoring_script="score.py",
        ),
        instance_count=3,
        resources=ResourceRequirements(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}
        ),
        environment_variables={"WORKER_COUNT": "2"},
    ).model_copy(update=changes)
    return OnlineDeploymentDoc(spec=spec, meta=Meta(version=4))


def test_rendered_objects_are_valid_kubernetes() -> None:
    for obj in render(doc(), ClusterSettings()):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_deployment_carries_the_spec() -> None:
    deployment, service = render(doc(), ClusterSettings(namespace="ml", image="reg/sluice:1"))
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "k8s-endpoint-blue"
    assert deployment["metadata"]["namespace"] == "ml"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/sluice:1"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    args = container["args"]
    assert args[args.index("--scoring-script") + 1] == "score.py"
    assert args[args.index("--model") + 1].endswith("/" + "ab" * 32 + "/model")
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"name": "WORKER_COUNT", "value": "2"} in container["env"]
    assert deployment["metadata"]["annotations"]["sluice.dev/spec-version"] == "4"


def test_object_names_are_dns_labels() -> None:
    name = object_name("a" * 40, "b" * 40)
    assert len(name) <= 63 and not name.endswith("-")
    assert object_name("My_Endpoint", "Blue") == "my-endpoint-blue"


def test_target_utilization_becomes_a_horizontal_pod_autoscaler() -> None:
    from sluice.common.resources import ScaleSettings

    scaled = doc(
        scale_settings=ScaleSettings(
            type="target_utilization",
            min_instances=2,
            max_instances=6,
            target_utilization_percentage=65,
        )
    )
    objects = render(scaled, ClusterSettings())
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    deployment, _, hpa = objects
    assert "replicas" not in deployment["spec"]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 65}
