"""Tracing end to end, with tracing on (sampling 100%): one `online-deployment create
--all-traffic` from the command line is one trace through the registry (its gRPC and Mongo
spans), the provisioner (the event's consumer span and its reconcile passes) and the traffic
controller (its sync and Envoy's ACK), carried by every event's `traceparent`; a request
scored through Envoy with a traceparent continues it, and its span holds the request id
Envoy returned and the run() span."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.common.settings import TracingSettings, service_env
from sluice.common.supervisor import Supervisor
from sluice.common.trace_files import trace_spans
from sluice.common.tracing import TRACES
from sluice.testing.plugin import EnvoyGateway, ServiceStarter
from sluice.testing.traffic import GatewayPorts, start_controller
from sluice.testing.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ENDPOINT = "traced"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'


def test_a_create_is_one_trace_and_a_scored_request_continues_its_callers(
    start_service: ServiceStarter,
    envs_dir: Path,
    trained_examples: Path,
    supervisor: Supervisor,
    envoy_gateway: EnvoyGateway,
    gateway_ports: GatewayPorts,
) -> None:
    tracing = TracingSettings(enabled=True, sampling_ratio=1.0)
    start_service.settings = start_service.settings.model_copy(
        update={"tracing": tracing, "envs_dir": envs_dir}
    )
    registry = start_service("registry")
    start_service("provisioner")
    settings = start_service.settings
    traffic = start_controller(registry.settings, supervisor, envoy_gateway, gateway_ports)
    folder = settings.state_dir / TRACES

    online = trained_examples / "online"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        **service_env(settings),
        "SLUICE_REGISTRY_ADDRESS": registry.address,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "sluice.sdk.cli", *args],
            env=env, cwd=online, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    cli("online-endpoint", "create", "-f", "endpoint.yml", "-n", ENDPOINT)
    created = cli(
        "online-deployment", "create", "-f", "blue-deployment.yml", "--all-traffic",
        "--set", f"endpoint_name={ENDPOINT}", "--set", "environment=null",
    )  # fmt: skip
    match = re.search(r"trace ([0-9a-f]{32})", created.stderr)
    assert match, created.stderr
    trace_id = match.group(1)

    def services_seen() -> list[dict[str, Any]] | None:
        spans = trace_spans(folder, trace_id)
        seen = {s["service"] for s in spans}
        names = {s["name"] for s in spans}
        done = {"cli", "registry", "provisioner", "traffic"} <= seen and "envoy: ACK" in names
        # Each service writes its spans in batches: a child can be on disk before its parent.
        ids = {s["span_id"] for s in spans}
        linked = all(s["parent_id"] is None or s["parent_id"] in ids for s in spans)
        return spans if done and linked else None

    spans = wait_for(
        services_seen, "the create's spans in every service, each with its parent", deadline=30
    )
    by_id = {s["span_id"]: s for s in spans}
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["service"] == "cli" and root["name"] == "sluice online-deployment create"
    # Every other span hangs from the CLI's, through gRPC, events and the workers.
    for span in spans:
        if span is not root:
            assert span["parent_id"] in by_id, span
    grpc = [s for s in spans if s["service"] == "registry" and s["kind"] == "SERVER"]
    assert any("CreateOnlineDeployment" in s["name"] for s in grpc)
    assert any(s["attributes"].get("db.system") == "mongodb" for s in spans)
    consumers = {s["name"] for s in spans if s["kind"] == "CONSUMER"}
    assert "provisioner: sluice.deployment.created" in consumers
    assert "traffic: sluice.instance.ready" in consumers or (
        "traffic: sluice.traffic.changed" in consumers
    )
    show = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "trace", "show", trace_id],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("cli: sluice online-deployment create")
    assert "  registry: " in show.stdout and "envoy: ACK" in show.stdout

    # A request through Envoy with the client's traceparent.
    key = cli("online-endpoint", "get-credentials", "-n", ENDPOINT, "-o", "tsv", "--query",
              "primaryKey").stdout.strip()  # fmt: skip
    client_trace = "5" * 32
    parent = ("traceparent", f"00-{client_trace}-00f067aa0ba902b7-01")

    def scored() -> tuple[int, dict[str, str], bytes] | None:
        answer = traffic.score(ENDPOINT, key, body=BODY, headers=[parent])
        return answer if answer[0] == 200 else None

    _, headers, _ = wait_for(scored, "blue to answer through Envoy", deadline=30)
    assert headers["traceparent"].startswith(f"00-{client_trace}-")

    def request_spans() -> list[dict[str, Any]] | None:
        found = trace_spans(folder, client_trace)
        return found if len(found) >= 2 else None

    request, run = wait_for(request_spans, "the request's spans", deadline=15)[-2:]
    assert request["name"] == "POST /score" and run["name"] == "run"
    assert run["parent_id"] == request["span_id"]
    assert request["attributes"]["sluice.request_id"] == headers["x-request-id"]
    assert request["attributes"]["sluice.endpoint"] == ENDPOINT
    assert request["attributes"]["sluice.deployment"] == "blue"
