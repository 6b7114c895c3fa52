"""End to end through the CLI on the local platform (`sluice up`): deployments that run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import psutil
import pytest

from sluice.common import gateway_auth
from sluice.common.platform import PlatformState
from sluice.testing.wait import wait_for
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
T = TypeVar("T")


class Cli:
    def __init__(self, state: PlatformState, cwd: Path):
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
            "SLUICE_STATE_DIR": str(state.state_dir),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        self.cwd = cwd

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sluice.sdk.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json").stdout)


def score(platform: PlatformState, endpoint: str, address: str) -> Any:
    """Score one instance directly, with the header only the gateway has (gateway_auth)."""
    secret_key = (platform.state_dir / "secret.key").read_text().strip()
    secret = gateway_auth.secret_for(secret_key, endpoint, "blue")
    body = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
    response = httpx.post(
        f"http://{address}/score", content=body, headers={gateway_auth.HEADER: secret}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def listening_pid(address: str) -> int:
    port = int(address.split(":")[1])
    return next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )


def test_deployment_lifecycle_through_the_cli(
    local_platform: PlatformState, trained_examples: Path
) -> None:
    online = trained_examples / "online"
    cli = Cli(local_platform, online)
    endpoint = "cli-lifecycle"
    # The YAML's `image:` stays (without its conda file, so nothing is built): the platform
    # cannot honour it, and says so in create's output and on the deployment's status.
    common = ("--set", f"endpoint_name={endpoint}", "--set", "environment.conda_file=null")
    cli.ok("online-endpoint", "create", "-f", "endpoint.yml", "--name", endpoint)
    created = cli.ok("online-deployment", "create", "-f", "blue-deployment.yml", *common)
    assert "Succeeded" in created.stderr
    ignored = "image 'mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest' is ignored"
    assert f"warning: {ignored}" in created.stderr

    def show() -> dict[str, Any]:
        doc: dict[str, Any] = cli.json("online-deployment", "show", "-n", "blue", "-e", endpoint)
        return doc

    (first,) = show()["instances"]
    assert f"warning: {ignored}" in show()["properties"]["sluice.status_message"]
    assert len(score(local_platform, endpoint, first["address"])) == 1

    # kill -9 an instance: the provisioner replaces it.
    os.kill(listening_pid(first["address"]), signal.SIGKILL)
    wait_for(
        lambda: [i for i in show()["instances"] if i["ready"] and i["id"] != first["id"]],
        "a replacement",
    )

    # Scale 1 -> 3 -> 1.
    for count in (3, 1):
        cli.ok("online-deployment", "update", "-f", "blue-deployment.yml", *common,
               "--set", f"instance_count={count}")  # fmt: skip
        doc = show()
        assert doc["provisioning_state"] == "Succeeded"
        assert len([i for i in doc["instances"] if i["ready"]]) == count

    # New scoring code: the new code serves, the old instances are gone.
    before = {i["id"] for i in show()["instances"]}
    script = online / "model-1/onlinescoring/score.py"
    script.write_text(
        script.read_text().replace("return result.tolist()", 'return {"v2": result.tolist()}')
    )
    cli.ok("online-deployment", "update", "-f", "blue-deployment.yml", *common)
    doc = show()
    assert not before & {i["id"] for i in doc["instances"]}
    assert "v2" in score(local_platform, endpoint, doc["instances"][0]["address"])

    logs = cli.ok("online-deployment", "get-logs", "-n", "blue", "-e", endpoint, "--lines", "50")
    assert "model 1: request received" in logs.stdout
    # A replaced instance's log is still there, by its id; an unknown id lists those there are.
    old = sorted(before)[0]
    kept = cli.ok("online-deployment", "get-logs", "-n", "blue", "-e", endpoint,
                  "--instance-id", old)  # fmt: skip
    assert f"instance {old} " in kept.stderr and kept.stdout.strip()
    unknown = cli.run("online-deployment", "get-logs", "-n", "blue", "-e", endpoint,
                      "--instance-id", "blue-nosuch")  # fmt: skip
    assert unknown.returncode == 1
    assert "no log of instance 'blue-nosuch'" in unknown.stderr and old in unknown.stderr


def test_failures_say_why(local_platform: PlatformState, trained_examples: Path) -> None:
    online = trained_examples / "online"
    cli = Cli(local_platform, online)
    endpoint = "cli-failures"
    cli.ok("online-endpoint", "create", "-f", "endpoint.yml", "--name", endpoint)
    script = online / "model-1/onlinescoring/score.py"
    script.write_text(
        "def init():\n    raise RuntimeError('cannot open model weights')\n\n"
        "def run(raw):\n    return raw\n"
    )
    broken = cli.run("online-deployment", "create", "-f", "blue-deployment.yml",
                     "--set", f"endpoint_name={endpoint}", "--set", "environment=null")  # fmt: skip
    assert broken.returncode == 1
    assert "cannot open model weights" in broken.stderr and "Traceback" in broken.stderr
    lines = [line.strip() for line in broken.stderr.splitlines()]
    assert "Traceback (most recent call last):" in lines  # readable lines, not a JSON string
    assert "RuntimeError: cannot open model weights" in lines
    assert "\\n" not in broken.stderr
    logs = cli.ok("online-deployment", "get-logs", "-n", "blue", "-e", endpoint)
    assert "RuntimeError: cannot open model weights" in logs.stdout

    (online / "bad-env.yml").write_text(
        "dependencies:\n  - pip:\n      - sluice-no-such-package-anywhere==9.9.9\n"
    )
    bad_env = cli.run("online-deployment", "create", "-f", "blue-deployment.yml", "--name", "green",
                      "--set", f"endpoint_name={endpoint}",
                      "--set", "environment.conda_file=bad-env.yml")  # fmt: skip
    assert bad_env.returncode == 1
    assert "environment build failed" in bad_env.stderr
    assert "sluice-no-such-package-anywhere" in bad_env.stderr
    build_log = cli.ok("online-deployment", "get-logs", "-n", "green", "-e", endpoint,
                       "-c", "storage-initializer")  # fmt: skip
    assert "sluice-no-such-package-anywhere" in build_log.stdout


@pytest.mark.timeout(400)  # the first demo trains the models and builds their environment
def test_make_up_demo_then_traffic_and_invoke(
    local_platform: PlatformState, tmp_path: Path
) -> None:
    """What the README's first command ends with, then the lines it tells the user to try."""
    cli = Cli(local_platform, tmp_path)
    examples = Path(__file__).resolve().parents[1] / "examples/online"
    # A first `make up` that stopped after making the endpoint (a deployment's upload or
    # environment that failed, Ctrl-C): the next one finishes the demo.
    cli.ok("online-endpoint", "create", "-f", str(examples / "endpoint.yml"))
    demo = cli.ok("demo")
    assert "exists (the demo did not finish)" in demo.stderr, demo.stderr
    assert "deployment green: Succeeded" in demo.stderr and "traffic blue=90" in demo.stderr
    assert "answered through Envoy" in demo.stdout
    assert "/endpoints/my-endpoint/score" in demo.stdout and "get-credentials" in demo.stdout
    moved = cli.ok(
        "online-endpoint", "update", "-n", "my-endpoint", "--traffic", "blue=0 green=100"
    )
    assert "The gateway serves the new traffic split." in moved.stderr
    request = Path(__file__).resolve().parents[1] / "examples/online/sample-request.json"
    scored = cli.ok(
        "online-endpoint", "invoke", "-n", "my-endpoint", "--request-file", str(request)
    )
    assert "served by green" in scored.stderr and len(json.loads(scored.stdout)) == 2
    pinned = cli.ok("online-endpoint", "invoke", "-n", "my-endpoint", "--deployment-name", "blue",
                    "--request-file", str(request))  # fmt: skip
    assert "served by blue" in pinned.stderr
    # As az prints it (its default -o json, kept by the az forwarder): one JSON string.
    quoted = cli.ok("online-endpoint", "invoke", "-n", "my-endpoint", "-o", "json",
                    "--request-file", str(request))  # fmt: skip
    assert len(json.loads(json.loads(quoted.stdout))) == 2
    unknown = cli.run("online-endpoint", "invoke", "-n", "my-endpoint", "--deployment-name", "red",
                      "--request-file", str(request))  # fmt: skip
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stderr
    # From another machine: no platform state here, the registry's address and a token;
    # the request goes to the scoring_uri the registry gives, trusted through SSL_CERT_FILE.
    remote = Cli(local_platform, tmp_path)
    remote.env.update({
        "SLUICE_STATE_DIR": str(tmp_path / "no-platform-here"),
        "SLUICE_REGISTRY_ADDRESS": local_platform.registry_address,
        "SLUICE_TOKEN": (local_platform.state_dir / "admin-token").read_text().strip(),
    })  # fmt: skip
    untrusted = remote.run("online-endpoint", "invoke", "-n", "my-endpoint",
                           "--request-file", str(request))  # fmt: skip
    assert untrusted.returncode == 1 and "SSL_CERT_FILE" in untrusted.stderr, untrusted.stderr
    remote.env["SSL_CERT_FILE"] = str(local_platform.state_dir / "tls" / "ca.crt")
    scored = remote.ok("online-endpoint", "invoke", "-n", "my-endpoint", "-d", "blue",
                       "--request-file", str(request))  # fmt: skip
    assert "served by blue" in scored.stderr and len(json.loads(scored.stdout)) == 2
    again = cli.ok("demo")  # every `make up` runs it: it must keep what the user changed
    assert "answered through Envoy" in again.stdout and "served by green" in again.stdout
    assert "kept as it is (traffic green=100)" in again.stderr  # the registry drops 0% shares
    shown = cli.json("online-endpoint", "show", "-n", "my-endpoint")
    assert {k: v for k, v in shown["traffic"].items() if v} == {"green": 100}
    cli.ok("online-deployment", "delete", "-n", "blue", "-e", "my-endpoint")
    cli.ok("demo")
    listed = cli.json("online-deployment", "list", "-e", "my-endpoint")
    assert [d["name"] for d in listed] == ["green"]  # not recreated


URLLIB_CLIENT = """
import json, sys, urllib.request
uri, key, body = sys.argv[1:]
request = urllib.request.Request(uri, data=body.encode(), headers={
    "Authorization": "Bearer " + key, "Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as reply:
    print(json.dumps({"status": reply.status, "body": json.loads(reply.read())}))
"""


def test_scoring_uri_from_show_works_in_plain_urllib_after_tls_trust(
    local_platform: PlatformState, tmp_path: Path
) -> None:
    """Azure's pattern: take `scoring_uri` from `show`, POST with the key, no special client."""
    cli = Cli(local_platform, tmp_path)
    cli.ok("demo")
    uri = cli.json("online-endpoint", "show", "-n", "my-endpoint")["scoring_uri"]
    assert uri == f"https://localhost:{local_platform.envoy_https_port}/endpoints/my-endpoint/score"
    key = cli.json("online-endpoint", "get-credentials", "-n", "my-endpoint")["primaryKey"]
    # A home of its own: the browsers' NSS stores touched are the test's, never the user's.
    home = tmp_path / "home"
    cli.env["HOME"] = str(home)
    certutil = shutil.which("certutil")
    if certutil is not None:
        (home / ".pki" / "nssdb").mkdir(parents=True)
        nssdb = f"sql:{home / '.pki' / 'nssdb'}"
        subprocess.run([certutil, "-N", "-d", nssdb, "--empty-password"], check=True)
    trusted = cli.ok("tls", "trust", "--no-system")
    bundle = local_platform.state_dir / "tls" / "trust-bundle.pem"
    assert f"wrote {bundle}" in trusted.stdout and "System store unchanged" in trusted.stdout
    browsers = "Browsers: added the CA" if certutil else "Browsers: no NSS database"
    assert browsers in trusted.stdout, trusted.stdout

    def urllib_client(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", URLLIB_CLIENT, uri, key, '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": os.environ["PATH"], **env},
        )  # fmt: skip

    untrusted = urllib_client()
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    scored = urllib_client(SSL_CERT_FILE=str(bundle))
    assert scored.returncode == 0, scored.stderr
    answer = json.loads(scored.stdout)
    assert answer["status"] == 200 and len(answer["body"]) == 1


def test_open_inference_protocol_through_the_gateway(local_platform: PlatformState) -> None:
    """KServe/Triton-style clients: `POST /v2/models/<deployment>/infer` through Envoy."""
    from sluice.common.settings import Settings
    from sluice.sdk.client import RegistryClient
    from sluice.sdk.invoke import GatewayTarget, send

    Cli(local_platform, Path.cwd()).ok("demo")  # my-endpoint with blue and green
    with RegistryClient.connect(Settings(state_dir=local_platform.state_dir)) as client:
        key = client.get_credentials("my-endpoint").primary_key
    request = {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64",
                           "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}]}  # fmt: skip
    status, headers, body = send(
        GatewayTarget.of_platform(local_platform),
        host=f"my-endpoint.{local_platform.domain}",
        path="/v2/models/green/infer",
        body=json.dumps(request).encode(),
        headers=[
            ("Authorization", f"Bearer {key}"),
            ("Content-Type", "application/json"),
            ("azureml-model-deployment", "green"),
        ],
    )
    assert status == 200, body
    output = json.loads(body)["outputs"][0]
    assert output["name"] == "predict" and output["shape"] == [1]
    assert dict((k.lower(), v) for k, v in headers)["azureml-model-deployment"] == "green"

    # The same over gRPC (inference.GRPCInferenceService) to the instances the provisioner
    # started: each serves gRPC on a port of its own, the gateway's twin cluster reaches it.
    infer = pb.ModelInferRequest(model_name="my-endpoint")
    infer.inputs.add(name="x", datatype="FP64", shape=[1, 10])
    infer.raw_input_contents.append(struct.pack("<10d", *range(1, 11)))
    options = [("grpc.default_authority", f"my-endpoint.{local_platform.domain}")]
    target = f"127.0.0.1:{local_platform.envoy_http_port}"
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {key}"), ("azureml-model-deployment", "green")]

        def served() -> bool:
            try:
                reply, call = stub.ModelInfer.with_call(infer, metadata=metadata, timeout=20)
            except grpc.RpcError as error:  # the twin cluster's first health check
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return False
            assert dict(call.initial_metadata())["azureml-model-deployment"] == "green"
            return [list(o.shape) for o in reply.outputs] == [[1]]

        wait_for(served, "a gRPC inference through the gateway", 20)
