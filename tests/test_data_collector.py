"""Azure's data_collector on the local platform: real deployments scored through Envoy write
what they were sent and what they answered (matching correlation ids), a sampling rate of
0.1 keeps about a tenth, and a full quota deletes the oldest closed partition, drops and
counts records without failing any request; `sluice online-deployment collected` reads it
back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.common.collected import collected_dir
from sluice.common.platform import PlatformState
from sluice.common.resources import OnlineDeploymentDoc, ProvisioningState
from sluice.common.settings import Settings
from sluice.sdk.client import RegistryClient, SluiceError, get_collected
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ENDPOINT = "collecting"
BOTH = [
    "data_collector.collections.model_inputs.enabled=True",
    "data_collector.collections.model_outputs.enabled='True'",
]
DEPLOYMENTS = {
    "full": BOTH,
    "tenth": [*BOTH, "data_collector.sampling_rate=0.1"],
    "tiny": [*BOTH, "environment_variables.DATA_COLLECTOR_MAX_BYTES=4000"],
}
SAMPLED = 1000  # requests to "tenth": Binomial(1000, 0.1) has mean 100, sd 9.5


def body(i: int) -> bytes:
    return json.dumps({"data": [[i, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}).encode()


def records(reply: Any, collection: str) -> list[dict[str, Any]]:
    parsed = [json.loads(r) for r in reply.records]
    return [r for r in parsed if r["type"] == f"azureml.inference.{collection}"]


def test_collected_inputs_and_outputs_sampling_and_quota(
    local_platform: PlatformState, trained_examples: Path
) -> None:
    online = trained_examples / "online"
    settings = Settings(state_dir=local_platform.state_dir)
    with RegistryClient.connect(settings) as client:
        client.create_online_endpoint(
            load_online_endpoint(online / "endpoint.yml", name=ENDPOINT).spec
        )
        for name, sets in DEPLOYMENTS.items():
            spec = load_online_deployment(
                online / "blue-deployment.yml",
                client.upload,
                ["environment=null", *sets],
                name=name,
                endpoint_name=ENDPOINT,
            ).spec
            client.create_online_deployment(spec)

        def serving(name: str) -> OnlineDeploymentDoc | None:
            doc = client.get_online_deployment(ENDPOINT, name)
            assert doc.meta.provisioning_state is not ProvisioningState.failed, (
                doc.meta.status_message
            )
            return doc if doc.meta.provisioning_state is ProvisioningState.succeeded else None

        for name in DEPLOYMENTS:
            wait_for(lambda name=name: serving(name), f"{name} to serve", deadline=120)
        client.set_traffic(ENDPOINT, {"full": 100})
        key = client.get_credentials(ENDPOINT).primary_key

    http = httpx.Client(
        base_url=f"http://127.0.0.1:{local_platform.envoy_http_port}",
        headers={
            "Host": f"{ENDPOINT}.{local_platform.domain}",
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
        },
        timeout=10,
    )

    def score(deployment: str, i: int) -> httpx.Response:
        pin = {"azureml-model-deployment": deployment}
        return http.post("/score", content=body(i), headers=pin)

    wait_for(lambda: score("full", 0).status_code == 200, "full to be routed", deadline=30)

    # Every request to "full" is collected, input and output under one correlation id.
    sent: dict[str, tuple[int, Any]] = {}
    for i in range(1, 31):
        reply = score("full", i)
        assert reply.status_code == 200, reply.text
        sent[reply.headers["x-request-id"]] = (i, reply.json())

    def collected(name: str, want: int) -> Any:
        got = get_collected(ENDPOINT, name, limit=5000, settings=settings)
        return got if got.total_records >= want else None

    full = wait_for(lambda: collected("full", 2 * 31), "full's 62 records", deadline=20)
    inputs, outputs = records(full, "model_inputs"), records(full, "model_outputs")
    assert len(inputs) == len(outputs) == 31  # the routing probe (i=0) too
    by_correlation = {r["correlationid"]: r for r in outputs}
    assert len(by_correlation) == 31
    for record in inputs:
        if record["xrequestid"] not in sent:
            continue  # the routing probe
        i, answer = sent.pop(record["xrequestid"])
        assert record["data"] == json.loads(body(i))
        assert by_correlation[record["correlationid"]]["data"] == answer
    assert not sent, "every request sent was collected"
    # Azure's partitions: <collection>/yyyy/MM/dd/HH/<instance>.jsonl
    folder = collected_dir(local_platform.state_dir, ENDPOINT, "full")
    assert {f.collection for f in full.files} == {"model_inputs", "model_outputs"}
    for file in full.files:
        parts = Path(file.path).relative_to(folder).parts
        assert len(parts) == 6 and parts[-1].endswith(".jsonl")
    assert not full.dropped

    # sampling_rate 0.1: about a tenth, inputs and outputs in pairs.
    for i in range(SAMPLED):
        assert score("tenth", i).status_code == 200

    def paired() -> Any:
        got = collected("tenth", 2 * 52)
        ins = records(got, "model_inputs") if got else []
        return got if got and len(ins) == len(records(got, "model_outputs")) else None

    tenth = wait_for(paired, "tenth's records", deadline=20)
    inputs, outputs = records(tenth, "model_inputs"), records(tenth, "model_outputs")
    assert 100 - 5 * 9.5 <= len(inputs) <= 100 + 5 * 9.5, len(inputs)  # +-5 sd
    assert {r["correlationid"] for r in inputs} == {r["correlationid"] for r in outputs}

    # A quota of 4000 bytes: requests keep succeeding, records beyond it are counted.
    for i in range(40):
        assert score("tiny", i).status_code == 200

    def accounted() -> Any:
        got = get_collected(ENDPOINT, "tiny", settings=settings)
        return got if got.dropped.get("quota", 0) + got.total_records == 80 else None

    tiny = wait_for(accounted, "tiny's 80 records written or counted as dropped", deadline=20)
    assert sum(f.size_bytes for f in tiny.files) <= 4000
    assert tiny.dropped["quota"] > 0 and tiny.total_records > 0

    # The quota is a ring buffer: an old partition (as a deployment of that name left it in
    # 2020) is deleted to make room for new records, and counted, once the writer has
    # measured the folder again (every 10 s).
    tiny_folder = collected_dir(local_platform.state_dir, ENDPOINT, "tiny")
    owner = tiny_folder.stat()
    old = tiny_folder / "model_outputs" / "2020" / "01" / "01" / "00"
    old.mkdir(parents=True)
    line = b'{"time": "2020-01-01T00:00:00.000+00:00"}\n'
    (old / "gone.jsonl").write_bytes(line * 40)
    for made in (old / "gone.jsonl", old, *list(old.parents)[:3]):  # up to 2020/
        os.chown(made, owner.st_uid, owner.st_gid)

    def evicted() -> Any:
        score("tiny", 0)
        got = get_collected(ENDPOINT, "tiny", settings=settings)
        return got if got.evicted.get("files") else None

    def why_not() -> str:  # the writer's stats and what its instance logged of collection
        out = [p.read_text() for p in (tiny_folder / "_stats").glob("*.json")]
        for log in local_platform.state_dir.rglob("*.log"):
            if "tiny" in str(log):
                out += [e for e in log.read_text().splitlines() if "collector" in e][-5:]
        return "\n".join(out)

    tiny = wait_for(evicted, "tiny's old partition evicted", deadline=60, why=why_not)
    assert not (tiny_folder / "model_outputs" / "2020").exists()
    assert tiny.evicted["partitions"] >= 1 and tiny.evicted["bytes"] >= 40 * len(line)
    assert tiny.evicted_before >= "2020-01-01T01:00:00+00:00"

    # The command line reads the same.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    cli = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "online-deployment", "collected",
         "-n", "full", "-e", ENDPOINT, "--since", "1h", "-c", "model_outputs", "-o", "json"],
        env={**env, "SLUICE_STATE_DIR": str(local_platform.state_dir)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    shown = json.loads(cli.stdout)
    assert shown["total_records"] == 31 and len(shown["records"]) == 20
    assert {r["type"] for r in shown["records"]} == {"azureml.inference.model_outputs"}
    bad = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "online-deployment", "collected",
         "-n", "full", "-e", ENDPOINT, "-c", "payloads"],
        env={**env, "SLUICE_STATE_DIR": str(local_platform.state_dir)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "collection must be one of" in bad.stderr
    table = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", "online-deployment", "collected",
         "-n", "tiny", "-e", ENDPOINT, "--limit", "1"],
        env={**env, "SLUICE_STATE_DIR": str(local_platform.state_dir), "COLUMNS": "400"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "the quota evicted the oldest" in table.stderr and "records before 20" in table.stderr
    assert "dropped {'quota': " in table.stderr
    # The names name a folder the provisioner reads as root: nothing but a collector's.
    with pytest.raises(SluiceError, match="is not an endpoint's or a deployment's name"):
        get_collected("..", "..", settings=settings)

    # What the deployment's own code may leave in its folder is not followed or read: a
    # FIFO (which would block the reader), a link to a device or to a folder elsewhere.
    folder = collected_dir(local_platform.state_dir, ENDPOINT, "full")
    before = get_collected(ENDPOINT, "full", limit=5000, settings=settings).total_records
    os.mkfifo(folder / "model_inputs" / "planted.jsonl")
    (folder / "model_outputs" / "zero.jsonl").symlink_to("/dev/zero")
    elsewhere = local_platform.state_dir / "logs"
    (folder / "model_outputs" / "linked").symlink_to(elsewhere)
    got = get_collected(ENDPOINT, "full", limit=5000, settings=settings)
    assert got.total_records == before
    assert not {Path(f.path).name for f in got.files} & {"planted.jsonl", "zero.jsonl"}
    assert all("linked" not in f.path for f in got.files)
