"""deploy/compose and deploy/k8s are for users (no Docker here): validate them offline.

Compose against the Compose specification schema, every Kubernetes object against
the Kubernetes schemas (strict), and every Envoy bootstrap with `envoy --mode validate`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml
from pymongo.uri_parser import parse_uri

from sluice.common.nats_auth import AUDIT_USER, CALLOUT_FOLDER, CLI_USER
from sluice.common.pki import PlatformPki
from sluice.common.platform import SERVICES, installed_services
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
    ScaleSettings,
)
from sluice.common.settings import MONGO_USER, Settings, is_loopback
from sluice.common.supervisor import resolve_binary
from sluice.provisioner.kubernetes import MANAGED_BY, ClusterSettings, render
from sluice.traffic.app import SERVICES as TRAFFIC_ROUTES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s" / "base"
BOOTSTRAP = ROOT / "deploy" / "envoy" / "bootstrap.yaml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
KNOWN_MODULES = {s.module for s in SERVICES}


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            objects.append((f"{name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return objects


@pytest.mark.integration  # starts a process
def test_compose_file_follows_the_compose_spec() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_only_services_that_exist() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    modules = {
        svc["command"][0]
        for svc in compose["services"].values()
        if svc.get("image") == "sluice:dev" and svc.get("restart") != "no"  # not one-shots
    }
    # Exactly the always-on control-plane services that exist so far.
    always_on = {
        "sluice.registry",
        "sluice.provisioner",
        "sluice.traffic",
        "sluice.metrics",
        "sluice.batch",
    }
    assert modules == {svc.module for svc in installed_services()} & always_on
    assert modules <= KNOWN_MODULES
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{module} is not a Sluice package"


@pytest.mark.parametrize(
    ("where", "obj"), k8s_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_kubernetes_object_is_valid(where: str, obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_and_the_secret_keys() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    example = (K8S / "secrets.env.example").read_text()
    keys = {
        line.split("=")[0] for line in example.splitlines() if line and not line.startswith("#")
    }
    assert keys == {"SLUICE_ADMIN_TOKEN", "SLUICE_SECRET_KEY", "SLUICE_MONGODB_PASSWORD"}


def test_kubernetes_services_run_existing_modules() -> None:
    for where, obj in k8s_objects():
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            if container["image"] == "sluice":
                module = container["args"][0]
                assert module in KNOWN_MODULES, where
                assert importlib.util.find_spec(module) is not None, where


def _platform_env(where: str) -> dict[str, str]:
    if where == "compose":
        env = yaml.safe_load(COMPOSE.read_text())["x-sluice-service"]["environment"]
    else:
        env = next(o for n, o in k8s_objects() if n.endswith("ConfigMap/sluice-config"))["data"]
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_the_management_listener_is_deployed_over_tls(where: str) -> None:
    """The traffic controller gets a management port, Envoy publishes it, every service the
    listener routes to has an address it resolves there, and the listener binds off
    loopback (the image's SLUICE_HOST), so it speaks TLS."""
    env = _platform_env(where)
    port = int(env["SLUICE_ENVOY__MANAGEMENT_PORT"])
    hosts: dict[str, set[int]] = {}  # service name -> ports it serves
    if where == "compose":
        compose = yaml.safe_load(COMPOSE.read_text())
        for name, svc in compose["services"].items():  # each serves its own SLUICE_PORTS__
            if svc.get("command") == [f"sluice.{name}"] and f"SLUICE_PORTS__{name.upper()}" in env:
                hosts[name] = {int(env[f"SLUICE_PORTS__{name.upper()}"])}
        published = {p.split(":")[-1] for p in compose["services"]["envoy"]["ports"]}
        assert str(port) in published
    else:
        for _, obj in k8s_objects():
            if obj["kind"] == "Service":
                hosts[obj["metadata"]["name"]] = {p["port"] for p in obj["spec"]["ports"]}
        envoy = next(o for n, o in k8s_objects() if n.endswith("Deployment/envoy"))
        (container,) = envoy["spec"]["template"]["spec"]["containers"]
        assert port in {p["containerPort"] for p in container["ports"]}
        exposing = [
            o
            for _, o in k8s_objects()
            if o["kind"] == "Service"
            and o["spec"]["selector"] == {"app.kubernetes.io/name": "envoy"}
            and port in {p.get("targetPort") for p in o["spec"]["ports"]}
        ]
        assert exposing, "no Service reaches the management listener"
    for component in set(TRAFFIC_ROUTES.values()):
        address = env[f"SLUICE_{component.upper()}_ADDRESS"]
        host, _, at = address.rpartition(":")
        assert int(at) == int(env[f"SLUICE_PORTS__{component.upper()}"]), address
        assert int(at) in hosts.get(host, set()), f"{address}: no such service and port"
    image_host = re.search(r"SLUICE_HOST=(\S+)", DOCKERFILE.read_text())
    assert image_host and not is_loopback(image_host[1])


def _nats_users(where: str) -> dict[str, tuple[str | None, set[str]]]:
    """Each container running our image or nats: (its SLUICE_NATS_USER, the NATS secrets it
    mounts: the nats-auth volume's subpaths, or the keys of the Kubernetes Secrets)."""
    found: dict[str, tuple[str | None, set[str]]] = {}
    if where == "compose":
        compose = yaml.safe_load(COMPOSE.read_text())
        for name, svc in compose["services"].items():
            mounted = {
                v["volume"]["subpath"]
                for v in svc.get("volumes", [])
                if isinstance(v, dict) and v.get("source") == "nats-auth"
            }
            if svc.get("restart") != "no" and (svc.get("image") == "sluice:dev" or mounted):
                found[name] = ((svc.get("environment") or {}).get("SLUICE_NATS_USER"), mounted)
        return found
    for _, obj in k8s_objects():
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = obj["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        secrets: set[str] = set()
        for volume in spec.get("volumes", []):
            secret = volume.get("secret", {})
            if secret.get("secretName") == "sluice-nats-users":
                secrets |= {item["key"] for item in secret["items"]}
            elif secret.get("secretName") == "sluice-nats-server":
                secrets.add("server")
        if container["image"] == "sluice" or secrets:
            found[obj["metadata"]["name"]] = (env.get("SLUICE_NATS_USER"), secrets)
    return found


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_each_service_gets_its_own_nats_user_and_only_its_password(where: str) -> None:
    """As `sluice up`: a NATS user per service (sluice.common.nats_auth), each container
    given its own password alone; the batch service also the auth callout's seed (its jobs'
    workers get users of their own through it); nats-server the configuration (hashes),
    not a password."""
    users = _nats_users(where)
    services = {s.name for s in installed_services()}
    assert services <= users.keys()
    for name in services:
        extra = {CALLOUT_FOLDER} if name == "batch" else set()
        assert users[name] == (name, {name} | extra), name
    assert users["nats"] == (None, {"server"})
    env = _platform_env(where)
    assert env["SLUICE_NATS_PASSWORD_FILE"] == "/run/secrets/nats/password"
    assert "@" not in env["SLUICE_NATS_URL"]  # no password in the manifests
    if where == "compose":
        nats = yaml.safe_load(COMPOSE.read_text())["services"]["nats"]["command"]
        one_shot = yaml.safe_load(COMPOSE.read_text())["services"]["nats-auth"]["command"]
        assert one_shot[0] == "sluice.common.nats_auth"
    else:
        kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        generated = {g["name"]: g.get("files", []) for g in kustomization["secretGenerator"]}
        keys = {f.split("=")[0] for f in generated["sluice-nats-users"]}
        assert keys == {*services, CALLOUT_FOLDER, CLI_USER, AUDIT_USER}
        for entry in generated["sluice-nats-users"]:  # as python -m sluice.common.nats_auth
            key, path = entry.split("=")
            assert path == f"nats-auth/{key}/{'seed' if key == CALLOUT_FOLDER else 'password'}"
        assert generated["sluice-nats-server"] == [
            "nats-server.conf=nats-auth/server/nats-server.conf"
        ]
        nats = next(o for n, o in k8s_objects() if n.endswith("StatefulSet/nats"))
        nats = nats["spec"]["template"]["spec"]["containers"][0]["args"]
    assert nats[:2] == ["--config", "/etc/nats/nats-server.conf"]


def _without_addresses(config: dict[str, Any]) -> dict[str, Any]:
    """What differs by place: the ADS and stats addresses and the platform CA's file names."""
    for cluster in config["static_resources"]["clusters"]:
        cluster.pop("type")
        cluster.pop("load_assignment")
    for secret in config["static_resources"]["secrets"]:
        for files in secret.get("tls_certificate", secret.get("validation_context")).values():
            files.pop("filename")
    return config


def deployed_bootstraps() -> dict[str, str]:
    envoy_k8s = next(
        doc
        for doc in yaml.safe_load_all((K8S / "envoy.yaml").read_text())
        if doc["kind"] == "ConfigMap"
    )
    return {
        "compose": (COMPOSE.parent / "envoy.yaml").read_text(),
        "k8s": envoy_k8s["data"]["bootstrap.yaml"],
    }


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deployed_envoy_bootstraps_match_the_local_one(where: str) -> None:
    local = _without_addresses(yaml.safe_load(BOOTSTRAP.read_text()))
    deployed = _without_addresses(yaml.safe_load(deployed_bootstraps()[where]))
    assert deployed == local, "out of step: run `uv run python scripts/gen_envoy_bootstraps.py`"


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deployed_envoys_send_their_stats_and_access_log_to_the_metrics_service(where: str) -> None:
    """The bootstrap's stats-sink and access-log clusters reach the metrics service's ports
    for Envoy (SLUICE_PORTS__ALS, SLUICE_PORTS__ACCESS_LOG), and the traffic controller turns
    the access log on."""
    config = yaml.safe_load(deployed_bootstraps()[where])
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    if where == "compose":
        env = yaml.safe_load(COMPOSE.read_text())["x-sluice-service"]["environment"]
    else:
        env = next(o for n, o in k8s_objects() if n.endswith("ConfigMap/sluice-config"))["data"]
    for cluster, port in (("sluice_stats", "ALS"), ("sluice_access_log", "ACCESS_LOG")):
        endpoint = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == "metrics"
        assert str(address["port_value"]) == str(env[f"SLUICE_PORTS__{port}"])
    assert str(env["SLUICE_TRAFFIC_ACCESS_LOG"]).lower() == "true"


@pytest.mark.integration  # starts a process
@pytest.mark.parametrize("where", ["local", "compose", "k8s"])
def test_envoy_accepts_the_bootstrap(where: str, tmp_path: Path) -> None:
    text = BOOTSTRAP.read_text() if where == "local" else deployed_bootstraps()[where]
    # The certificate files it names exist where it runs; here, a CA of the test's own.
    identity = PlatformPki(tmp_path / "pki").client("sluice-gateway")
    config = yaml.safe_load(text)
    client, ca = config["static_resources"]["secrets"]
    client["tls_certificate"]["certificate_chain"]["filename"] = str(identity.cert)
    client["tls_certificate"]["private_key"]["filename"] = str(identity.key)
    ca["validation_context"]["trusted_ca"]["filename"] = str(identity.ca)
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(config))
    envoy = resolve_binary("envoy")
    assert envoy, "envoy is installed by `make setup`"
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


GRAFANA = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "sluice-endpoints.json"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def exported_metric_names() -> set[str]:
    """Every family a Sluice service exports: the metrics service's Azure view and own
    counters, the shared control-plane families, the inference server's."""
    from prometheus_client import CollectorRegistry

    from sluice.common import prometheus
    from sluice.inference.metrics import Metrics
    from sluice.metrics.buckets import Buckets
    from sluice.metrics.flusher import Flusher
    from sluice.metrics.forward import IngestStats
    from sluice.metrics.live import LiveView

    flusher = Flusher(Buckets(), None, interval_s=1, max_pending=1)  # type: ignore[arg-type]
    view = LiveView(None, 60, IngestStats(), flusher)  # type: ignore[arg-type]
    view.latest = {("e", "d"): (0, dict.fromkeys(["RequestsPerMinute"], 1.0))}
    names = {family.name for family in view.collect()}
    registry = CollectorRegistry()
    Metrics(registry)
    names |= {family.name for family in registry.collect()}
    for value in vars(prometheus).values():
        if hasattr(value, "_name") and hasattr(value, "describe"):
            names.add(value._name)
    return names


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "endpoint", "deployment"} <= variables
    exported = exported_metric_names()
    assert "azureml_requests_per_minute" in exported
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b(?:azureml|sluice)_[a-z0-9_]+", target["expr"]):
                base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
                assert base in exported, f"{panel['title']}: {name} is not exported by Sluice"


# ---- the provisioner's reach on Kubernetes (provisioner.yaml, provisioner-policy.yaml) --------

PROVISIONER = "system:serviceaccount:sluice:sluice-provisioner"
RESOURCES = {
    "Secret": ("", "v1", "secrets"),
    "Service": ("", "v1", "services"),
    "Deployment": ("apps", "v1", "deployments"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
}


def admitted(
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    user: str = PROVISIONER,
) -> bool:
    """Whether the API server's admission lets the request through provisioner-policy.yaml's
    policies: each one that matches it (rules, then conditions) must find every validation
    true; an error is a refusal (failurePolicy: Fail). CEL evaluated by cel-python."""
    kind = (obj or old or {})["kind"]
    group, version, resource = RESOURCES[kind]
    env = celpy.Environment()

    def evaluate(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    request = {
        "operation": operation,
        "namespace": "sluice",
        "userInfo": {"username": user},
        "resource": {"group": group, "version": version, "resource": resource},
    }
    base = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(obj),
        "oldObject": celpy.json_to_cel(old),
    }
    for _, policy in k8s_objects():
        if policy["kind"] != "ValidatingAdmissionPolicy":
            continue
        spec = policy["spec"]
        assert spec["failurePolicy"] == "Fail"
        if not any(
            group in rule["apiGroups"]
            and resource in rule["resources"]
            and operation in rule["operations"]
            for rule in spec["matchConstraints"]["resourceRules"]
        ):
            continue
        if not all(evaluate(c["expression"], base) for c in spec.get("matchConditions", [])):
            continue
        activation = dict(base)
        variables: dict[Any, Any] = {}
        for variable in spec.get("variables", []):
            activation["variables"] = celpy.celtypes.MapType(variables)
            try:
                value = evaluate(variable["expression"], activation)
            except celpy.CELEvalError:
                return False  # every validation here uses its variables
            variables[celpy.celtypes.StringType(variable["name"])] = value
        activation["variables"] = celpy.celtypes.MapType(variables)
        for validation in spec["validations"]:
            try:
                if not evaluate(validation["expression"], activation):
                    return False
            except celpy.CELEvalError:
                return False
    return True


def provisioner_objects() -> list[dict[str, Any]]:
    """Everything the provisioner renders, in its fullest form: gateway secret, data
    collector, autoscaler."""
    artifact = "sha256:" + "ab" * 32
    spec = OnlineDeploymentSpec(
        name="blue",
        endpoint_name="fraud",
        kind=ComputeKind.kubernetes,
        model=ModelRef(artifact=ArtifactRef(digest=artifact, name="model", is_directory=True)),
        code_configuration=CodeConfiguration(
            code=ArtifactRef(digest=artifact, name="src", is_directory=True),
            scoring_script="score.py",
        ),
        data_collector=DataCollector(collections={"model_inputs": DataCollection(enabled=True)}),
        scale_settings=ScaleSettings(type="target_utilization", min_instances=1, max_instances=3),
    )
    objects = render(OnlineDeploymentDoc(spec=spec, meta=Meta(version=2)), ClusterSettings(), "s")
    assert {o["kind"] for o in objects} == set(RESOURCES)
    return objects


def test_the_provisioners_objects_pass_its_admission_policies() -> None:
    for obj in provisioner_objects():
        assert admitted("CREATE", obj), obj["kind"]
        assert admitted("UPDATE", obj, obj), obj["kind"]
        assert admitted("DELETE", None, obj), obj["kind"]


def _with(obj: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = json.loads(json.dumps(obj))
    change(changed)
    return changed


def test_the_provisioner_can_neither_touch_the_platforms_objects_nor_mount_its_secrets() -> None:
    platform_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "sluice-nats-users",
            "labels": {"app.kubernetes.io/part-of": "sluice"},
        },
        "data": {"batch": "c2VjcmV0"},
    }
    registry = next(o for n, o in k8s_objects() if n.endswith("Deployment/registry"))
    for platform in (platform_secret, registry):
        forged = _with(
            platform,
            lambda o: (
                o["metadata"]
                .setdefault("labels", {})
                .update({"app.kubernetes.io/managed-by": MANAGED_BY})
            ),
        )
        assert not admitted("UPDATE", forged, platform), platform["metadata"]["name"]
        assert not admitted("DELETE", None, platform), platform["metadata"]["name"]
        # Operators (anyone but the provisioner) are none of these policies' business.
        assert admitted("DELETE", None, platform, user="kubernetes-admin")
    objects = {o["kind"]: o for o in provisioner_objects()}
    secret, deployment = objects["Secret"], objects["Deployment"]
    renamed = _with(secret, lambda o: o["metadata"].update({"name": "sluice-secrets"}))
    assert not admitted("CREATE", renamed)
    unlabelled = _with(secret, lambda o: o["metadata"].pop("labels"))
    assert not admitted("CREATE", unlabelled)

    def pod(o: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = o["spec"]["template"]["spec"]
        return spec

    def container(o: dict[str, Any]) -> dict[str, Any]:
        first: dict[str, Any] = pod(o)["containers"][0]
        return first

    attacks = {
        "envFrom a platform secret": lambda o: container(o).update(
            {"envFrom": [{"secretRef": {"name": "sluice-secrets"}}]}
        ),
        "a key of another secret": lambda o: container(o)["env"].append(
            {
                "name": "X",
                "valueFrom": {"secretKeyRef": {"name": "sluice-nats-users", "key": "batch"}},
            }
        ),
        "a secret volume": lambda o: pod(o)["volumes"].append(
            {"name": "pki", "secret": {"secretName": "sluice-pki"}}
        ),
        "the whole state volume": lambda o: container(o)["volumeMounts"].append(
            {"name": "state", "mountPath": "/state"}
        ),
        "out of the artifacts": lambda o: container(o)["volumeMounts"].append(
            {"name": "state", "mountPath": "/pki", "subPath": "artifacts/../pki", "readOnly": True}
        ),
        "artifacts writable": lambda o: container(o)["volumeMounts"][0].pop("readOnly"),
        "a host path": lambda o: pod(o)["volumes"].append(
            {"name": "scratch", "hostPath": {"path": "/"}}
        ),
        "a service-account token": lambda o: pod(o).update({"automountServiceAccountToken": True}),
        "the provisioner's account": lambda o: pod(o).update(
            {"serviceAccountName": "sluice-provisioner"}
        ),
        "an init container": lambda o: pod(o).update({"initContainers": [container(o)]}),
        "the host's network": lambda o: pod(o).update({"hostNetwork": True}),
    }
    for attack, change in attacks.items():
        assert not admitted("CREATE", _with(deployment, change)), attack
        assert not admitted("UPDATE", _with(deployment, change), deployment), attack


def test_the_provisioners_role_grants_what_its_client_calls_and_reads_no_secret() -> None:
    """KubernetesBackend: server-side apply of each rendered kind (create, patch), deletes,
    one read of its Deployment, one list of its pods, reads of their logs."""
    role = next(o for n, o in k8s_objects() if n.endswith("Role/sluice-provisioner"))
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        (group, resource, verb)
        for group, _, resource in RESOURCES.values()
        for verb in ("create", "patch", "delete")
    } | {("apps", "deployments", "get"), ("", "pods", "list"), ("", "pods/log", "get")}
    assert granted == needed
    assert not {v for g, r, v in granted if r == "secrets"} & {"get", "list", "watch"}


def test_only_the_provisioners_pods_get_a_kubernetes_api_token() -> None:
    """Only the provisioner calls the Kubernetes API; any other pod's token (the namespace's
    default service account) would be a credential for whatever runs in it, batch workers'
    deployment code included."""
    with_token = set()
    for where, obj in k8s_objects():
        if obj["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = obj["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken", True):
            with_token.add((where, pod.get("serviceAccountName", "default")))
    assert with_token == {("provisioner.yaml:Deployment/provisioner", "sluice-provisioner")}


def test_services_running_deployment_code_cannot_reach_the_platform_ca() -> None:
    """The provisioner (the local backend's instances) and the batch service (its workers)
    run deployment code as their own uid: in compose the state volume's pki/ (the CA's key)
    is hidden from them under an empty tmpfs, once the pki one-shot made it; in Kubernetes
    the state volume holds no pki/ and neither pod mounts the sluice-pki Secret."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("provisioner", "batch"):
        hidden = [
            v
            for v in services[name]["volumes"]
            if isinstance(v, dict) and v["type"] == "tmpfs" and v["target"] == "/var/lib/sluice/pki"
        ]
        assert hidden, name
        assert services[name]["depends_on"]["pki"] == {
            "condition": "service_completed_successfully"
        }
    pki_writer = services["pki"]
    assert pki_writer["command"] == ["sluice.common.pki", "/var/lib/sluice/pki"]
    for where, obj in k8s_objects():
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] in {"provisioner", "batch"}:
            volumes = obj["spec"]["template"]["spec"]["volumes"]
            secrets = {v.get("secret", {}).get("secretName") for v in volumes}
            assert "sluice-pki" not in secrets, where


def test_platform_containers_gain_no_privilege() -> None:
    """Every container of the Sluice image (deployment code runs as children of two of them)
    runs as a non-root uid with no capability and no privilege escalation (setuid binaries of
    the image included)."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, svc in services.items():
        if svc.get("image") == "sluice:dev" and svc.get("restart") != "no":
            assert svc["cap_drop"] == ["ALL"], name
            assert "no-new-privileges:true" in svc["security_opt"], name
            assert "user" not in svc, name  # the image's USER 10001
    assert "USER 10001" in DOCKERFILE.read_text()
    for where, obj in k8s_objects():
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if container["image"] != "sluice":
                continue
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }, where


def _mongo_container(where: str) -> dict[str, Any]:
    """The MongoDB container as (entrypoint, args, env, probe), from compose or k8s; compose's
    `$$` (a literal `$` for the container's shell) undone as compose does."""
    if where == "compose":
        mongo = yaml.safe_load(COMPOSE.read_text())["services"]["mongo"]
        for text in (*mongo["entrypoint"], *mongo["healthcheck"]["test"]):  # `$x`: compose's
            assert not re.search(r"(?<!\$)\$(?![${])", text.replace("$$", "")), text
        unescape = lambda text: text.replace("$$", "$")  # noqa: E731
        return {
            "entrypoint": [unescape(a) for a in mongo["entrypoint"]],
            "args": mongo["command"],
            "env": mongo["environment"],
            "probe": [unescape(a) for a in mongo["healthcheck"]["test"][1:]],
        }
    stateful = next(o for n, o in k8s_objects() if n.endswith("StatefulSet/mongo"))
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    env: dict[str, Any] = {}
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        env[entry["name"]] = entry.get("value") or f"secret:{ref['name']}/{ref['key']}"
    return {
        "entrypoint": container["command"],
        "args": container["args"],
        "env": env,
        "probe": container["readinessProbe"]["exec"]["command"][2:],
    }


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_mongodb_requires_the_platforms_user_and_services_log_in(where: str) -> None:
    """Without authentication anything on the network (deployment code in the provisioner's
    and batch containers included) could rewrite endpoints, keys' ciphertexts and tokens.
    MongoDB gets a root user `sluice` with SLUICE_MONGODB_PASSWORD (the image then runs
    with --auth; a replica set with authentication needs its key file), its probe logs in,
    and every service gets the password in its environment (a Secret), never in a file."""
    mongo = _mongo_container(where)
    assert mongo["env"]["MONGO_INITDB_ROOT_USERNAME"] == MONGO_USER
    expected = (
        "${SLUICE_MONGODB_PASSWORD:?set SLUICE_MONGODB_PASSWORD}"
        if where == "compose"
        else "secret:sluice-secrets/SLUICE_MONGODB_PASSWORD"
    )
    assert mongo["env"]["MONGO_INITDB_ROOT_PASSWORD"] == expected
    args = mongo["args"]
    assert args[0] == "mongod" and args[args.index("--keyFile") + 1] == "/tmp/mongo-keyfile"
    assert args[args.index("--replSet") + 1] == "rs0"
    assert mongo["entrypoint"][:2] == ["bash", "-c"]
    assert 'exec docker-entrypoint.sh "$@"' in mongo["entrypoint"][2]
    assert mongo["probe"][0].startswith('mongosh --quiet -u "$MONGO_INITDB_ROOT_USERNAME" -p ')
    assert "--authenticationDatabase admin" in mongo["probe"][0]
    env = _platform_env(where)
    assert "@" not in env["SLUICE_MONGODB_URI"]  # no password in the manifests
    if where == "compose":
        assert env["SLUICE_MONGODB_PASSWORD"] == expected
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        for name, svc in services.items():
            if svc.get("image") == "sluice:dev" and svc.get("restart") != "no":
                assert svc["environment"]["SLUICE_MONGODB_PASSWORD"] == expected, name
    else:
        example = (K8S / "secrets.env.example").read_text()
        assert re.search(r"^SLUICE_MONGODB_PASSWORD=$", example, re.M)
        for where_, obj in k8s_objects():
            if obj["kind"] != "Deployment":
                continue
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container["image"] == "sluice":
                    refs = [e.get("secretRef", {}).get("name") for e in container["envFrom"]]
                    assert "sluice-secrets" in refs, where_
    # What a service makes of it: the platform's user, the admin database, the replica set.
    uri = Settings(
        mongodb_uri=env["SLUICE_MONGODB_URI"], mongodb_password="0123abcd" * 8
    ).mongodb_uri
    assert uri is not None
    parsed = parse_uri(uri)
    assert (parsed["username"], parsed["password"]) == (MONGO_USER, "0123abcd" * 8)
    assert parsed["options"]["authSource"] == "admin" and parsed["options"]["replicaSet"] == "rs0"


@pytest.mark.integration  # runs bash
@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_the_mongodb_key_file_is_written_before_the_image_starts(
    where: str, tmp_path: Path
) -> None:
    """The entrypoint script as the container's bash runs it, with the image's entrypoint
    and chown replaced by stand-ins (and the key file in tmp_path, not this machine's /tmp):
    a private key file within MongoDB's limits (6-1024 base64 characters) exists when
    docker-entrypoint.sh starts, with mongod's arguments."""
    mongo = _mongo_container(where)
    keyfile = str(tmp_path / "mongo-keyfile")
    script = mongo["entrypoint"][2].replace("/tmp/mongo-keyfile", keyfile)
    args = [keyfile if a == "/tmp/mongo-keyfile" else a for a in mongo["args"]]
    assert args != mongo["args"] and script != mongo["entrypoint"][2]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chown").write_text('#!/bin/sh\necho "$@" > "$OUT/chown"\n')
    (bin_dir / "docker-entrypoint.sh").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT/args"\n'
        'stat -c %a "$KEYFILE" > "$OUT/mode"\ncp "$KEYFILE" "$OUT/keyfile"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    bash = shutil.which("bash")  # the container's entrypoint[0]
    assert bash is not None
    result = subprocess.run(
        [bash, "-c", script, *mongo["entrypoint"][3:], *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path), "KEYFILE": keyfile},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().splitlines() == args
    assert (tmp_path / "mode").read_text().strip() == "600"
    assert (tmp_path / "chown").read_text().split() == ["mongodb:mongodb", keyfile]
    key = "".join((tmp_path / "keyfile").read_text().split())
    assert 6 <= len(key) <= 1024 and re.fullmatch(r"[A-Za-z0-9+/=]+", key)


LANDLOCK = "SLUICE_LANDLOCK"


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deployment_code_starts_in_a_landlock_sandbox(where: str) -> None:
    """The batch service and the provisioner cannot switch users there (one uid, no
    capability): their deployment code (batch workers, local instances) is sandboxed
    instead (sluice.common.confine)."""
    if where == "compose":
        services = yaml.safe_load(COMPOSE.read_text())["services"]
        sandboxed = {n for n, s in services.items() if s.get("environment", {}).get(LANDLOCK)}
        values = {services[n]["environment"][LANDLOCK] for n in sandboxed}
    else:
        sandboxed, values = set(), set()
        for _, obj in k8s_objects():
            if obj["kind"] == "Deployment":
                (container,) = obj["spec"]["template"]["spec"]["containers"]
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if LANDLOCK in env:
                    sandboxed.add(obj["metadata"]["name"])
                    values.add(env[LANDLOCK])
    assert sandboxed == {"batch", "provisioner"} and values == {"true"}
    with pytest.MonkeyPatch.context() as patch:  # as the service reads it
        patch.setenv(LANDLOCK, values.pop())
        assert Settings().landlock is True
