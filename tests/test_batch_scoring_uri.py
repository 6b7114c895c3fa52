"""A batch endpoint's scoring URI, as Azure's: `POST <scoring_uri>` starts a job.

On the local platform (`sluice up`): the URI `batch-endpoint show` prints answers through
Envoy, with a Sluice token, Azure's body (`properties.InputData` / `OutputData`) and the
`azureml-model-deployment` header; the job runs and writes where OutputData said. At the
endpoint's own host (`<endpoint>.<domain>/jobs`) too. Each mistake is answered with a
JSON message naming it, and creates no job.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sluice.common.platform import PlatformState
from sluice.common.settings import Settings
from sluice.sdk.batch import BatchClient
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint
from sluice.testing.cli import Cli
from sluice.testing.rest import rest_of
from sluice.testing.wait import wait_for
from sluice.v1 import batch_pb2

pytestmark = pytest.mark.integration

SCORE = """\
import os


def init():
    pass


def run(mini_batch):
    return [f"{os.path.basename(f)},{os.environ['WHO']}" for f in mini_batch]
"""


@dataclass
class BatchEndpoint:
    name: str
    scoring_uri: str
    token: str
    settings: Settings
    datastore: Path  # the platform's workspaceblobstore
    folder: str  # this test's folder in it


@pytest.fixture
def endpoint(local_platform: PlatformState, tmp_path: Path) -> Iterator[BatchEndpoint]:
    name = f"bsu-{uuid.uuid4().hex[:8]}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCORE)
    (tmp_path / "endpoint.yml").write_text(f"name: {name}\n")
    for deployment in ("first", "second"):
        (tmp_path / f"{deployment}.yml").write_text(
            yaml.safe_dump(
                {
                    "name": deployment,
                    "endpoint_name": name,
                    "type": "model",
                    "code_configuration": {"code": "code/", "scoring_script": "score.py"},
                    "environment_variables": {"WHO": deployment},
                    "resources": {"instance_count": 1},
                    "settings": {"max_concurrency_per_instance": 1, "mini_batch_size": 2},
                }
            )
        )
    datastore = local_platform.state_dir / "datastore" / "workspaceblobstore"
    inputs = datastore / name / "in"
    inputs.mkdir(parents=True)
    for i in range(3):
        (inputs / f"file-{i}.txt").write_text(f"{i}\n")
    settings = Settings(state_dir=local_platform.state_dir)
    with RegistryClient.connect(settings) as registry:
        registry.create_batch_endpoint(load_batch_endpoint(tmp_path / "endpoint.yml").spec)
        for deployment in ("first", "second"):
            spec = load_batch_deployment(tmp_path / f"{deployment}.yml", registry.upload).spec
            registry.create_batch_deployment(spec, set_default=deployment == "first")
        uri = registry.get_batch_endpoint(name).scoring_uri
        try:
            yield BatchEndpoint(
                name=name,
                scoring_uri=uri,
                token=rest_of(local_platform).admin_token,
                settings=settings,
                datastore=datastore,
                folder=name,
            )
        finally:
            registry.delete_batch_endpoint(name)


def _post(
    url: str, body: Any, *, token: str | None, ca: Path, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    content = body if isinstance(body, str) else None
    return httpx.post(
        url,
        json=None if content is not None else body,
        content=content,
        headers={"content-type": "application/json", **sent},
        verify=ssl.create_default_context(cafile=ca),
        timeout=60,
    )


def _body(folder: str, output: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "InputData": {
            "mnistinput": {
                "JobInputType": "UriFolder",
                "Uri": f"azureml://datastores/workspaceblobstore/paths/{folder}",
            }
        }
    }
    if output is not None:
        properties["OutputData"] = {
            "score": {
                "JobOutputType": "UriFile",
                "Uri": f"azureml://datastores/workspaceblobstore/paths/{output}",
            }
        }
    return {"properties": properties}


def _finished(batch: BatchClient, job: str) -> Any:
    def done() -> Any:
        got = batch.get(job)
        ended = {batch_pb2.JOB_STATE_COMPLETED, batch_pb2.JOB_STATE_FAILED}
        return got if got.state in ended else None

    return wait_for(done, f"job {job} ends", deadline=120)


def test_post_to_the_scoring_uri_runs_a_job(
    endpoint: BatchEndpoint,
    local_platform: PlatformState,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = local_platform.state_dir / "tls" / "ca.crt"
    assert endpoint.scoring_uri.endswith(f"/endpoints/{endpoint.name}/jobs")
    body = _body(f"{endpoint.folder}/in", f"{endpoint.folder}/out/predictions.csv")
    answer = _post(endpoint.scoring_uri, body, token=endpoint.token, ca=ca)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["type"] == "Microsoft.MachineLearningServices/workspaces/jobs"
    assert job["properties"]["experimentName"] == endpoint.name
    assert job["properties"]["status"] in {"Queued", "Running", "Completed"}
    # The header picks a deployment other than the default (its rows say which).
    pinned = _post(
        endpoint.scoring_uri,
        _body(f"{endpoint.folder}/in", f"{endpoint.folder}/pinned/out.csv"),
        token=endpoint.token,
        ca=ca,
        headers={"azureml-model-deployment": "second"},
    )
    assert pinned.status_code == 200, pinned.text
    # Polled as Azure's examples poll it: GET <scoring_uri>/<the last segment of its id>.
    polled = f"{endpoint.scoring_uri}/{job['id'].rsplit('/', 1)[1]}"

    def status() -> str | None:
        answer = httpx.get(
            polled,
            verify=ssl.create_default_context(cafile=ca),
            headers={"authorization": f"Bearer {endpoint.token}"},
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()["properties"]["status"]
        return found if found in {"Completed", "Failed", "Canceled"} else None

    assert wait_for(status, "the job ends, polled at its scoring URI", deadline=120) == "Completed"
    elsewhere = httpx.get(
        polled.replace(f"/{endpoint.name}/", "/another-endpoint/"),
        verify=ssl.create_default_context(cafile=ca),
        headers={"authorization": f"Bearer {endpoint.token}"},
    )
    assert elsewhere.status_code == 404, elsewhere.text
    assert "is not a job of batch endpoint 'another-endpoint'" in elsewhere.json()["message"]
    # az's `job show --web` opens Studio; Sluice's opens the portal's page of the job.
    shown = Cli(capsys, monkeypatch).complete(
        "job",
        "show",
        "-n",
        job["name"],
        "--web",
        "-o",
        "json",
        env={"SLUICE_STATE_DIR": str(local_platform.state_dir), "BROWSER": "true"},
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == job["name"]
    page = f"{local_platform.management_url}/portal/#/jobs/{job['name']}"
    assert f"Opened: {page}" in " ".join(shown.stderr.split())
    with BatchClient.connect(endpoint.settings) as batch:
        done = _finished(batch, job["name"])
        assert done.state == batch_pb2.JOB_STATE_COMPLETED, done.status_message
        assert done.deployment_name == "first" and done.progress.files_succeeded == 3
        rows = (endpoint.datastore / endpoint.folder / "out" / "predictions.csv").read_text()
        assert sorted(rows.split()) == [f"file-{i}.txt,first" for i in range(3)]
        other = _finished(batch, pinned.json()["name"])
        assert other.deployment_name == "second", other.status_message
        rows = (endpoint.datastore / endpoint.folder / "pinned" / "out.csv").read_text()
        assert sorted(rows.split()) == [f"file-{i}.txt,second" for i in range(3)]

    # The endpoint's own host: `<endpoint>.<domain>/jobs` (plain-HTTP listener, Host header).
    assert local_platform.envoy_http_port
    by_host = httpx.post(
        f"http://127.0.0.1:{local_platform.envoy_http_port}/jobs",
        json=_body(f"{endpoint.folder}/in"),
        headers={
            "host": f"{endpoint.name}.{local_platform.domain}",
            "authorization": f"Bearer {endpoint.token}",
        },
        timeout=60,
    )
    assert by_host.status_code == 200, by_host.text
    assert by_host.json()["properties"]["experimentName"] == endpoint.name
    read = httpx.get(
        f"http://127.0.0.1:{local_platform.envoy_http_port}/jobs/{by_host.json()['name']}",
        headers={
            "host": f"{endpoint.name}.{local_platform.domain}",
            "authorization": f"Bearer {endpoint.token}",
        },
    )
    assert read.status_code == 200 and read.json()["name"] == by_host.json()["name"], read.text


def test_mistakes_are_answered_and_create_no_job(
    endpoint: BatchEndpoint, local_platform: PlatformState
) -> None:
    ca = local_platform.state_dir / "tls" / "ca.crt"
    uri, folder = endpoint.scoring_uri, f"{endpoint.folder}/in"
    rest = rest_of(local_platform)
    status, created = rest.call("POST", "/tokens", {"user": "bsu-reader", "role": "ROLE_READER"})
    assert status == 200, created
    reader = created["secret"]
    unknown_type = {
        "properties": {"InputData": {"x": {"JobInputType": "Literal", "Uri": "azureml://x"}}}
    }
    two_inputs = {
        "properties": {
            "InputData": {
                "a": {"JobInputType": "UriFolder", "Uri": "azureml://a"},
                "b": {"JobInputType": "UriFolder", "Uri": "azureml://b"},
            }
        }
    }
    typo = {"properties": {**_body(folder)["properties"], "OutputDatas": {}}}
    cases: list[tuple[str, Any, str | None, dict[str, str], int, str]] = [
        (uri, _body(folder), None, {}, 401, "authorization"),
        (uri, _body(folder), "not-a-token", {}, 401, "token"),
        (uri, _body(folder), reader, {}, 403, "bsu-reader (reader) may not call CreateEndpointJob"),
        (uri, {"properties": {}}, endpoint.token, {}, 400, "properties.InputData is missing"),
        (uri, unknown_type, endpoint.token, {}, 400, "JobInputType 'Literal'"),
        (uri, two_inputs, endpoint.token, {}, 400, "exactly one named entry, got 2"),
        (uri, typo, endpoint.token, {}, 400, "properties.outputdatas is not understood"),
        (uri, "{not json", endpoint.token, {}, 400, "Expected : between key:value pair"),
        (
            uri,
            _body(f"{endpoint.folder}/nothing-here"),
            endpoint.token,
            {},
            400,
            "nothing-here",
        ),
        (
            uri,
            _body(folder),
            endpoint.token,
            {"azureml-model-deployment": "third"},
            404,
            "deployment 'third' does not exist",
        ),
        (
            uri.replace(endpoint.name, "no-such-batch-endpoint"),
            _body(folder),
            endpoint.token,
            {},
            404,
            "batch endpoint 'no-such-batch-endpoint' does not exist",
        ),
    ]
    for url, body, token, headers, status, says in cases:
        answer = _post(url, body, token=token, ca=ca, headers=headers)
        assert answer.status_code == status, (body, headers, answer.text)
        assert says in answer.json()["message"], answer.text
    # A GET of the jobs is not a job request: the gateway's own 404, not the batch service;
    # one of an unknown job, or of a job of another endpoint, is the service's 404.
    for url, says in [
        (uri, "no online endpoint answers here"),
        (f"{uri}/batchjob-nothing", "job 'batchjob-nothing' does not exist"),
    ]:
        got = httpx.get(
            url,
            verify=ssl.create_default_context(cafile=ca),
            headers={"authorization": f"Bearer {endpoint.token}"},
        )
        assert got.status_code == 404 and says in got.json()["message"], got.text
    with BatchClient.connect(endpoint.settings) as batch:
        assert batch.list(endpoint.name) == []  # nothing was created
