"""Write the compose and Kubernetes copies of Envoy's bootstrap from deploy/envoy/bootstrap.yaml.

The three differ only in where the ADS, stats and access-log clusters point
(`traffic:18000`, `metrics:50055` and `metrics:50056`, found by DNS) and where the
platform CA's files are.
`tests/test_deploy.py` fails when a copy is out of step; run this after editing the local one:

    uv run python scripts/gen_envoy_bootstraps.py
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "deploy" / "envoy" / "bootstrap.yaml"
COMPOSE = ROOT / "deploy" / "compose" / "envoy.yaml"
K8S = ROOT / "deploy" / "k8s" / "base" / "envoy.yaml"
COMPOSE_HEADER = (
    "# Envoy bootstrap for deploy/compose: the same as deploy/envoy/bootstrap.yaml with the\n"
    "# ADS, stats and access-log clusters pointing at the `traffic` and `metrics` services\n"
    "# (scripts/gen_envoy_bootstraps.py writes it).\n"
)


# The platform CA's files in the containers (compose: the state volume, where the one-shot
# `pki` service writes them; Kubernetes: the `sluice-pki` Secret mounted there).
PKI = "/var/lib/sluice/pki"


def deployed(local: dict[str, Any]) -> dict[str, Any]:
    """The local bootstrap with the ADS cluster found by DNS at `traffic:18000`, the stats
    sink's at `metrics:50055`, the access log's at `metrics:50056` and the platform CA's
    files at PKI."""
    config = copy.deepcopy(local)
    client, ca = config["static_resources"]["secrets"]
    client["tls_certificate"]["certificate_chain"]["filename"] = f"{PKI}/client-sluice-gateway.crt"
    client["tls_certificate"]["private_key"]["filename"] = f"{PKI}/client-sluice-gateway.key"
    ca["validation_context"]["trusted_ca"]["filename"] = f"{PKI}/ca.crt"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name, host, port in (
        ("sluice_xds", "traffic", 18000),
        ("sluice_stats", "metrics", 50055),
        ("sluice_access_log", "metrics", 50056),
    ):
        cluster = clusters[name]
        cluster["type"] = "STRICT_DNS"
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"].update(address=host, port_value=port)
    return config


def main() -> None:
    text = yaml.safe_dump(deployed(yaml.safe_load(LOCAL.read_text())), sort_keys=False)
    COMPOSE.write_text(COMPOSE_HEADER + text)
    docs = list(yaml.safe_load_all(K8S.read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config_map["data"]["bootstrap.yaml"] = text
    head = K8S.read_text().split("\n", 1)[0]
    K8S.write_text(head + "\n" + yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    main()
