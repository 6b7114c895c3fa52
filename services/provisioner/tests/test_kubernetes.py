"""Rendered Kubernetes objects for kubernetes online deployments, checked offline against the
Kubernetes schemas (no cluster runs here; applying them is the official client's job)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from sluice.common.resources import (
    ArtifactRef,
    CodeConfiguration,
    ComputeKind,
    DataCollection,
    DataCollector,
    Meta,
    ModelRef,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    ResourceRequirements,
)
from sluice.provisioner.kubernetes import (
    TEMPLATE_ANNOTATION,
    ClusterSettings,
    NoInstance,
    log_pod,
    object_name,
    pod_instances,
    render,
    rollout_complete,
    rollout_failure,
)

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
    for obj in render(doc(), ClusterSettings(), gateway_secret="fake-gateway-secret"):
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_pods_are_locked_down_and_only_the_gateway_reaches_them() -> None:
    objects = {o["kind"]: o for o in render(doc(), ClusterSettings(), "fake-gateway-secret")}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The gateway secret comes from a Secret, never as a literal in the pod spec.
    assert "fake-gateway-secret" not in str(objects["Deployment"])
    assert objects["Secret"]["stringData"] == {"secret": "fake-gateway-secret"}
    (rule,) = objects["NetworkPolicy"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}]
    # REST and the Open Inference Protocol's gRPC port.
    assert rule["ports"] == [{"protocol": "TCP", "port": 5001}]


def test_deployment_carries_the_spec() -> None:
    deployment, service, _policy = render(
        doc(), ClusterSettings(namespace="ml", image="reg/sluice:1")
    )
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
    assert args[args.index("--model") + 1] == "/var/lib/sluice/model/model"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {"name": "WORKER_COUNT", "value": "2"} in container["env"]
    assert deployment["metadata"]["annotations"]["sluice.dev/spec-version"] == "4"


def test_a_pod_mounts_only_its_own_model_and_code_and_collects_into_its_own_folder() -> None:
    """Not the whole state volume (other deployments' models, batch outputs, collected data):
    each artifact folder alone, read-only; with data_collector its own folder, writable."""
    plain = render(doc(), ClusterSettings())[0]["spec"]["template"]["spec"]
    (state,) = (v for v in plain["volumes"] if "persistentVolumeClaim" in v)
    assert state["persistentVolumeClaim"]["readOnly"] is True
    mounts = [m for m in plain["containers"][0]["volumeMounts"] if m["name"] == "state"]
    assert {m["subPath"] for m in mounts} == {"artifacts/sha256/" + "ab" * 32}
    assert all(m["readOnly"] for m in mounts)

    collecting = doc(
        data_collector=DataCollector(
            collections={"model_inputs": DataCollection(enabled=True)},
            sampling_rate=0.5,
        ),
        environment_variables={"DATA_COLLECTOR_MAX_BYTES": "1000"},
        app_insights_enabled=True,
    )
    cluster = ClusterSettings(otlp_endpoint="http://otel-collector:4317")
    objects = render(collecting, cluster)
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    pod = objects[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (collected,) = (m for m in container["volumeMounts"] if "collected" in m["mountPath"])
    assert collected["subPath"] == (
        "datastore/workspaceblobstore/modelDataCollector/K8s_Endpoint/blue"
    )
    assert not collected.get("readOnly")
    args = container["args"]
    assert args[args.index("--collect-dir") + 1] == collected["mountPath"]
    assert args[args.index("--collect") + 1] == "model_inputs"
    assert args[args.index("--collect-sampling-rate") + 1] == "0.5"
    assert args[args.index("--collect-max-bytes") + 1] == "1000"  # lowered by the deployment
    assert args[args.index("--trace-otlp-endpoint") + 1] == "http://otel-collector:4317"
    # Without an OTLP collector a pod has nowhere to send spans: no tracing flags.
    assert "--trace-otlp-endpoint" not in str(render(collecting, ClusterSettings()))


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
    deployment, _, _, hpa = objects
    assert "replicas" not in deployment["spec"]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 65}


# ---- what the cluster says, as the API's JSON -------------------------------------------------


def pod(name: str, ip: str | None, ready: bool, terminating: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, object] = {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_pods_become_instances_at_their_ip() -> None:
    pods = [
        pod("b", "10.0.0.2", ready=False),
        pod("a", "10.0.0.1", ready=True),
        pod("pending", None, ready=False),  # no IP yet: nothing to route to
        pod("leaving", "10.0.0.3", ready=True, terminating=True),  # out of routing at once
        pod("v6", "fd00::1", ready=True),
    ]
    assert [(i.id, i.address, i.ready) for i in pod_instances(pods)] == [
        ("a", "10.0.0.1:5001", True),
        ("b", "10.0.0.2:5001", False),
        ("v6", "[fd00::1]:5001", True),
    ]


def deployment_status(generation: int = 2, observed: int = 2, **status: int) -> dict[str, object]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": observed, **status},
    }


ROLLOUTS = [
    ("complete", deployment_status(replicas=2, updatedReplicas=2, readyReplicas=2), True),
    (
        "spec not seen yet",
        deployment_status(observed=1, replicas=2, updatedReplicas=2, readyReplicas=2),
        False,
    ),
    ("one old pod left", deployment_status(replicas=3, updatedReplicas=2, readyReplicas=3), False),
    (
        "new pods not ready",
        deployment_status(replicas=2, updatedReplicas=2, readyReplicas=1),
        False,
    ),
    ("nothing yet", deployment_status(), False),
]


@pytest.mark.parametrize(
    ("deployment", "complete"), [r[1:] for r in ROLLOUTS], ids=[r[0] for r in ROLLOUTS]
)
def test_rollout_complete(deployment: dict[str, object], complete: bool) -> None:
    assert rollout_complete(deployment) is complete


def test_switching_off_autoscaling_renders_no_autoscaler_and_a_replica_count() -> None:
    objects = render(doc(), ClusterSettings())
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "NetworkPolicy"]
    assert objects[0]["spec"]["replicas"] == 3


def test_egress_disabled_adds_an_egress_policy_open_only_to_the_trace_collector() -> None:
    """`egress_public_network_access: disabled`: the pod's NetworkPolicy also governs egress,
    with no rule (nowhere), or, when it exports spans, the collector's port and DNS. Enabled
    (the default), egress is not governed, as before."""
    traced = ClusterSettings(tracing=True, otlp_endpoint="http://otel-collector:4317")
    for settings, expected in (
        (ClusterSettings(), []),
        (traced, [{"protocol": "TCP", "port": 4317}, {"protocol": "UDP", "port": 53}]),
    ):
        objects = render(doc(egress_public_network_access="disabled"), settings, "secret")
        for obj in objects:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        policy = next(o for o in objects if o["kind"] == "NetworkPolicy")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        ports = [p for rule in policy["egress"] for p in rule["ports"]]
        assert ports[:2] == expected
    default = next(o for o in render(doc(), traced, "secret") if o["kind"] == "NetworkPolicy")
    assert default["spec"]["policyTypes"] == ["Ingress"] and "egress" not in default["spec"]


# ---- why a rollout fails, from the API's JSON ------------------------------------------------
# Shapes as the API server answers `GET .../deployments/<name>` and `GET .../pods` (the
# Kubernetes API reference's Deployment, DeploymentCondition, Pod and ContainerStatus).

NEW = "7c9d8f6b5e4a3b21"  # the current pod template's digest (TEMPLATE_ANNOTATION)
OLD = "0a1b2c3d4e5f6a7b"  # the one before it


def k8s_deployment(*conditions: dict[str, object], observed: int = 3) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "k8s-endpoint-blue", "namespace": "sluice", "generation": 3},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {"metadata": {"annotations": {TEMPLATE_ANNOTATION: NEW}}},
        },
        "status": {
            "observedGeneration": observed,
            "replicas": 3,
            "updatedReplicas": 1,
            "readyReplicas": 2,
            "availableReplicas": 2,
            "unavailableReplicas": 1,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "Deployment has minimum availability.",
                },
                *conditions,
            ],
        },
    }


PROGRESSING = {
    "type": "Progressing",
    "status": "True",
    "reason": "ReplicaSetUpdated",
    "message": 'ReplicaSet "k8s-endpoint-blue-7c9d8f6b5" is progressing.',
}
DEADLINE_EXCEEDED = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "k8s-endpoint-blue-7c9d8f6b5" has timed out progressing.',
    "lastUpdateTime": "2026-03-02T10:10:05Z",
    "lastTransitionTime": "2026-03-02T10:10:05Z",
}
COMPLETE = {
    "type": "Progressing",
    "status": "True",
    "reason": "NewReplicaSetAvailable",
    "message": 'ReplicaSet "k8s-endpoint-blue-7c9d8f6b5" has successfully progressed.',
}


def container(
    state: dict[str, object],
    last: dict[str, object] | None = None,
    restarts: int = 0,
    ready: bool = False,
) -> dict[str, object]:
    return {
        "name": "inference-server",
        "image": "reg.example/sluice:1",
        "imageID": "",
        "ready": ready,
        "started": "running" in state,
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": last} if last else {},
    }


def exited(code: int, reason: str = "Error") -> dict[str, object]:
    return {
        "exitCode": code,
        "reason": reason,
        "startedAt": "2026-03-02T10:01:00Z",
        "finishedAt": "2026-03-02T10:01:04Z",
        "containerID": "containerd://9f1e",
    }


RUNNING = {"running": {"startedAt": "2026-03-02T10:00:05Z"}}
CRASH_LOOP = {
    "waiting": {
        "reason": "CrashLoopBackOff",
        "message": "back-off 40s restarting failed container=inference-server "
        "pod=k8s-endpoint-blue-7c9d8f6b5-x2x9q_sluice(0b1c2d3e)",
    }
}


def k8s_pod(
    name: str, status: dict[str, object], template: str = NEW, ready: bool = False
) -> dict[str, object]:
    unready = {"reason": "ContainersNotReady", "message": "containers with unready status: [x]"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "sluice",
            "creationTimestamp": "2026-03-02T10:00:00Z",
            "labels": {"app.kubernetes.io/instance": "k8s-endpoint-blue"},
            "annotations": {TEMPLATE_ANNOTATION: template},
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"}
                if ready
                else {"type": "Ready", "status": "False", **unready},
                {"type": "PodScheduled", "status": "True"},
            ],
            "podIP": "10.244.1.7",
            "containerStatuses": [status],
            "qosClass": "Burstable",
        },
    }


def unscheduled_pod(name: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "annotations": {TEMPLATE_ANNOTATION: NEW}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient memory.",
                }
            ],
            "qosClass": "Burstable",
        },
    }


FAILED_PODS = [
    (
        "init() raised: CrashLoopBackOff",
        container(CRASH_LOOP, exited(1), restarts=3),
        ["exited with code 1", "init() failed?", "restarted it 3 times", "CrashLoopBackOff"],
        True,
    ),
    (
        "OOMKilled",
        container(CRASH_LOOP, exited(137, "OOMKilled"), restarts=2),
        ["OOMKilled, exit code 137", "more memory than its limit", "CrashLoopBackOff"],
        True,
    ),
    (
        "terminated again before the kubelet says CrashLoopBackOff",
        container({"terminated": exited(1)}, exited(1), restarts=2),
        ["exited with code 1", "restarted it 2 times (terminated)"],
        False,  # the current container is the one that exited: its own log
    ),
    (
        "ImagePullBackOff",
        container(
            {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "reg.example/sluice:1"',
                }
            }
        ),
        [
            "cannot pull its image (ImagePullBackOff)",
            'Back-off pulling image "reg.example/sluice:1"',
        ],
        None,
    ),
    (
        "InvalidImageName",
        container(
            {"waiting": {"reason": "InvalidImageName", "message": 'invalid image "Reg/X:1"'}}
        ),
        ["cannot pull its image (InvalidImageName)", 'invalid image "Reg/X:1"'],
        None,
    ),
    (
        "CreateContainerConfigError",
        container(
            {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "k8s-endpoint-blue-gateway" not found',
                }
            }
        ),
        ["cannot create its container (CreateContainerConfigError)", 'gateway" not found'],
        None,
    ),
]


@pytest.mark.parametrize(
    ("status", "words", "previous"), [f[1:] for f in FAILED_PODS], ids=[f[0] for f in FAILED_PODS]
)
def test_a_failed_pod_fails_the_rollout_saying_why(
    status: dict[str, object], words: list[str], previous: bool | None
) -> None:
    """Each failure names the pod and the reason (and the exit code); the log to show is the
    crashed container's (`previous`), none when no container ran (image, container config)."""
    failure = rollout_failure(k8s_deployment(PROGRESSING), [k8s_pod("blue-new", status)])
    assert failure is not None
    assert failure.message.startswith("instance blue-new ")
    for word in words:
        assert word in failure.message
    if previous is None:
        assert failure.pod is None
    else:
        assert (failure.pod, failure.previous) == ("blue-new", previous)


STARTING = [
    ("ContainerCreating", container({"waiting": {"reason": "ContainerCreating"}})),
    # A first failed pull is retried by the kubelet (ImagePullBackOff if it keeps failing).
    ("ErrImagePull once", container({"waiting": {"reason": "ErrImagePull", "message": "429"}})),
    ("first start, init() running", container(RUNNING)),
    ("exited once and restarted (not a loop yet)", container(RUNNING, exited(1), restarts=1)),
    ("exited once, being restarted", container({"terminated": exited(1)}, restarts=1)),
]


@pytest.mark.parametrize("status", [s[1] for s in STARTING], ids=[s[0] for s in STARTING])
def test_a_pod_starting_normally_is_not_failed(status: dict[str, object]) -> None:
    assert rollout_failure(k8s_deployment(PROGRESSING), [k8s_pod("blue-new", status)]) is None


def test_a_completed_rollout_is_not_failed() -> None:
    """Every pod ready, one of them restarted after a crash long ago (auto-recovery)."""
    pods = [
        k8s_pod("blue-a", container(RUNNING, ready=True), ready=True),
        k8s_pod("blue-b", container(RUNNING, exited(137, "OOMKilled"), 4, ready=True), ready=True),
    ]
    assert rollout_failure(k8s_deployment(COMPLETE), pods) is None


def test_a_failed_update_is_reported_while_the_old_pods_keep_serving() -> None:
    """New pods crash-loop: the update fails, naming the new pod; the old pods (an earlier
    template, ready) are not the failure and stay instances, as Kubernetes keeps them."""
    pods = [
        k8s_pod("blue-old-1", container(RUNNING, ready=True), template=OLD, ready=True),
        k8s_pod("blue-old-2", container(RUNNING, ready=True), template=OLD, ready=True),
        k8s_pod("blue-new", container(CRASH_LOOP, exited(1), restarts=3)),
    ]
    failure = rollout_failure(k8s_deployment(PROGRESSING), pods)
    assert failure is not None and failure.pod == "blue-new"
    assert [(i.id, i.ready) for i in pod_instances(pods)] == [
        ("blue-new", False),  # not ready: the gateway does not route to it
        ("blue-old-1", True),
        ("blue-old-2", True),
    ]


def test_pods_of_a_failed_earlier_version_do_not_fail_the_next_one() -> None:
    """The fix is applied: the failed version's pod still crash-loops (an earlier template)
    while the new template's pod starts."""
    pods = [
        k8s_pod("blue-broken", container(CRASH_LOOP, exited(1), restarts=5), template=OLD),
        k8s_pod("blue-fixed", container({"waiting": {"reason": "ContainerCreating"}})),
    ]
    assert rollout_failure(k8s_deployment(PROGRESSING), pods) is None


def test_a_rollout_past_its_progress_deadline_fails_saying_what_waits() -> None:
    pods = [
        k8s_pod("blue-slow", container(RUNNING)),  # init() never returns: never ready
        unscheduled_pod("blue-waiting"),
    ]
    failure = rollout_failure(k8s_deployment(DEADLINE_EXCEEDED), pods)
    assert failure is not None
    assert failure.message.startswith(
        "the rollout made no progress for 600 s (ProgressDeadlineExceeded: "
        'ReplicaSet "k8s-endpoint-blue-7c9d8f6b5" has timed out progressing).'
    )
    assert "instance blue-slow never became ready" in failure.message
    assert "instance blue-waiting is not scheduled: 0/3 nodes are available" in failure.message
    assert (failure.pod, failure.previous) == ("blue-slow", False)  # its current log
    # The condition of an earlier spec (the controller has not seen the new one yet): no verdict.
    assert rollout_failure(k8s_deployment(DEADLINE_EXCEEDED, observed=2), pods) is None


def test_pods_carry_a_digest_of_their_template() -> None:
    """Equal templates, equal digests (a count change rolls nothing); a new one otherwise."""

    def digest(d: OnlineDeploymentDoc) -> str:
        template = render(d, ClusterSettings())[0]["spec"]["template"]
        value: str = template["metadata"]["annotations"][TEMPLATE_ANNOTATION]
        return value

    assert digest(doc()) == digest(doc(instance_count=7))
    assert digest(doc()) != digest(doc(environment_variables={"WORKER_COUNT": "4"}))


def test_get_logs_reads_the_newest_pod_or_the_one_named() -> None:
    pods = [
        {"metadata": {"name": "blue-b", "creationTimestamp": "2026-03-02T10:05:00Z"}},
        {"metadata": {"name": "blue-a", "creationTimestamp": "2026-03-02T10:00:00Z"}},
    ]
    assert log_pod(pods) == "blue-b"
    assert log_pod(pods, "blue-a") == "blue-a"
    with pytest.raises(NoInstance, match=r"no pod 'blue-c'.*\(oldest first\): blue-a, blue-b"):
        log_pod(pods, "blue-c")
    with pytest.raises(NoInstance, match="no pod"):
        log_pod([])
