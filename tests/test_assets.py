"""Registered models, environments and data, and deployments that name them (issue 14)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common import gateway_auth
from sluice.common.assets import AssetKind, AssetSpec
from sluice.common.mongo import Document
from sluice.common.resources import OnlineDeployment, ProvisioningState
from sluice.registry.assets import USED_BY_JOBS
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.cli import Cli as InProcessCli
from sluice.testing.plugin import RunningService
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration


def settled(client: RegistryClient) -> OnlineDeployment | None:
    doc = client.get_online_deployment("my-endpoint", "blue")
    terminal = {ProvisioningState.succeeded, ProvisioningState.failed}
    return doc if doc.meta.provisioning_state in terminal else None


class Cli:
    """`sluice ...` against the test's registry, in the test's process (sluice.testing.cli)."""

    def __init__(self, runner: InProcessCli, registry: RunningService, cwd: Path):
        self.runner, self.cwd = runner, cwd
        self.env: dict[str, str | None] = {
            "SLUICE_REGISTRY_ADDRESS": registry.address,
            "SLUICE_ADMIN_TOKEN": registry.settings.admin_token or "",
            "SLUICE_STATE_DIR": str(registry.settings.state_dir),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.runner.complete(*args, env=self.env, cwd=self.cwd)

    def elsewhere(self, *args: str) -> subprocess.CompletedProcess[str]:
        """As a CLI on another machine: the registry's address and token, but a state folder
        of its own, empty, so no file of the platform's is there to copy from."""
        empty = self.cwd.parent / "elsewhere"
        empty.mkdir(exist_ok=True)
        assert not any(empty.iterdir())
        env = {**self.env, "SLUICE_STATE_DIR": str(empty)}
        return self.runner.complete(*args, env=env, cwd=self.cwd)

    def json(self, *args: str) -> dict[str, object]:
        result = self.run(*args, "-o", "yaml")
        assert result.returncode == 0, result.stderr
        loaded = yaml.safe_load(result.stdout)
        assert isinstance(loaded, dict | list)
        return loaded  # type: ignore[return-value]

    def error(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> InProcessCli:
    return InProcessCli(capsys, monkeypatch)


@pytest.fixture
def cli(registry: RunningService, examples: Path, in_process: InProcessCli) -> Cli:
    return Cli(in_process, registry, examples / "online")


def test_versions_labels_archive_restore(client: RegistryClient, examples: Path) -> None:
    def model(folder: str, version: str = "") -> AssetSpec:
        artifact = client.upload(examples / "online" / folder)
        return AssetSpec(
            asset_kind=AssetKind.model, name="my-model", version=version, artifact=artifact,
            type="custom_model",
        )  # fmt: skip

    first = client.create_asset(model("model-1/model")).doc
    assert first.spec.version == "1"
    assert client.create_asset(model("model-2/model", "7")).doc.spec.version == "7"
    third = client.create_asset(model("model-1/model")).doc
    assert third.spec.version == "8"  # the next integer
    assert third.spec.artifact == first.spec.artifact  # same folder, same stored artifact
    with pytest.raises(SluiceError, match="version '1' already exists; versions are immutable"):
        client.create_asset(model("model-2/model", "1"))
    assert client.get_asset(AssetKind.model, "my-model@latest").doc.spec.version == "8"
    client.archive_asset(AssetKind.model, "my-model", "8")
    assert client.get_asset(AssetKind.model, "azureml:my-model@latest").doc.spec.version == "7"
    listed = client.list_assets(AssetKind.model, "my-model")
    assert [a.doc.spec.version for a in listed] == ["7", "1"]  # newest first, as Azure's
    everything = client.list_assets(AssetKind.model, "my-model", include_archived=True)
    assert [a.doc.spec.version for a in everything] == ["8", "7", "1"]
    client.restore_asset(AssetKind.model, "my-model", "8")
    by_id = "azureml:/subscriptions/0/resourceGroups/g/workspaces/w/models/my-model/versions/8"
    assert not client.get_asset(AssetKind.model, by_id).doc.archived
    with pytest.raises(SluiceError, match="model type must be one of custom_model"):
        client.create_asset(model("model-1/model").model_copy(update={"type": "onnx"}))
    with pytest.raises(SluiceError, match="is an mlflow_model but its folder has no MLmodel"):
        client.create_asset(model("model-1/model").model_copy(update={"type": "mlflow_model"}))
    assert len(client.list_assets(AssetKind.model, "my-model", include_archived=True)) == 3


def test_version_lists_are_newest_first(cli: Cli, client: RegistryClient, examples: Path) -> None:
    """`az ml model list -n m --query "[0].version"` is the idiom for the latest version:
    lists are newest first, by creation (as Azure's), not by version number."""
    artifact = client.upload(examples / "online/model-1/model")
    for name, versions in (("m", ["1", "2", "3"]), ("late", ["1", "3", "2"])):
        for version in versions:
            client.create_asset(
                AssetSpec(asset_kind=AssetKind.model, name=name, version=version,
                          artifact=artifact, type="custom_model")
            )  # fmt: skip
    result = cli.run("model", "list", "-n", "m", "-o", "tsv", "--query", "[0].version")
    assert result.returncode == 0 and result.stdout == "3\n", result.stdout + result.stderr
    listed = cli.json("model", "list", "-n", "late")
    assert [v["version"] for v in listed] == ["2", "3", "1"]  # type: ignore[index, union-attr]
    assert cli.json("model", "show", "-n", "late", "-l", "latest")["version"] == "2"


def test_asset_text_is_bounded_and_nothing_is_stored(
    cli: Cli, client: RegistryClient, examples: Path
) -> None:
    """docs/security.md's limits (descriptions, tags) and an environment's files are checked
    for assets too: INVALID_ARGUMENT naming the field, nothing stored."""
    model = AssetSpec(asset_kind=AssetKind.model, name="big", version="1", type="custom_model",
                      artifact=client.upload(examples / "online/model-1/model"))  # fmt: skip
    env = AssetSpec(asset_kind=AssetKind.environment, name="big-env", image="python:3.11")
    data = AssetSpec(asset_kind=AssetKind.data, name="big-data", type="uri_file",
                     path="https://example.com/rows.csv")  # fmt: skip
    cases = [
        (
            model.model_copy(update={"description": "x" * 5000}),
            "model 'big': description is 5000 characters; at most 4096 are allowed",
        ),
        (
            model.model_copy(update={"tags": {f"t{i}": "v" for i in range(51)}}),
            "model 'big': tags: 51 given, at most 50 are allowed",
        ),
        (
            model.model_copy(update={"tags": {"k": "v" * 300}}),
            "model 'big': tags: value of 'k' is over 256 characters",
        ),
        (
            env.model_copy(update={"conda_file": "name: e\n" + "#" * 70_000}),
            "environment 'big-env': conda_file is 70008 characters; at most 65536 are allowed",
        ),
        (
            env.model_copy(update={"pip_requirements": tuple(f"p{i}" for i in range(1001))}),
            "environment 'big-env': pip_requirements: 1001 lines given, at most 1000",
        ),
        (
            env.model_copy(update={"image": "i" * 2000}),
            "environment 'big-env': image is 2000 characters; at most 1024 are allowed",
        ),
        (
            data.model_copy(update={"path": "https://example.com/" + "a" * 3000}),
            "data 'big-data': path is 3020 characters; at most 2048 are allowed",
        ),
        (
            data.model_copy(update={"path": "/var/data/rows.csv"}),
            "data 'big-data': path '/var/data/rows.csv' is not a URI (https://..., file:///...",
        ),
    ]
    for spec, message in cases:
        with pytest.raises(SluiceError) as caught:
            client.create_asset(spec)
        assert caught.value.code == "INVALID_ARGUMENT", spec
        assert message in str(caught.value), str(caught.value)
    (cli.cwd / "big-conda.yml").write_text("name: e\n# " + "x" * 70_000 + "\n")
    refused = cli.error("environment", "create", "-n", "big-env", "--conda-file", "big-conda.yml")
    assert "bytes; a conda file may hold at most 65536" in refused, refused
    uri, long = "https://example.com/rows.csv", "d" * 4097
    refused = cli.error("data", "create", "-n", "big-data", "-t", "uri_file", "-p", uri,
                        "--description", long)  # fmt: skip
    assert "data 'big-data': description is 4097 characters; at most 4096" in refused
    for kind in AssetKind:
        assert client.list_assets(kind, include_archived=True) == []


def test_lists_are_paged_below_grpc_message_limit(cli: Cli, client: RegistryClient) -> None:
    """48 versions at the limits (a 4096-character description, 50 tags of the longest
    names and values, a 60 KiB conda file) make about 5 MB: over the 4 MiB a gRPC client
    receives in one message. Lists come in pages under 1 MiB, in order, none lost."""
    conda = "name: e\ndependencies:\n  - pip:\n    - numpy\n# " + "x" * 60_000 + "\n"
    tags = {f"{i:02d}" + "k" * 510: "v" * 256 for i in range(50)}
    for version in range(1, 49):
        client.create_asset(
            AssetSpec(asset_kind=AssetKind.environment, name="big", version=str(version),
                      description="d" * 4096, tags=tags, conda_file=conda)
        )  # fmt: skip
    listed = client.list_assets(AssetKind.environment, "big")
    assert [a.doc.spec.version for a in listed] == [str(v) for v in range(48, 0, -1)]
    assert sum(len(a.doc.spec.conda_file) + 4096 + 50 * 768 for a in listed) > 4 * 1024 * 1024
    result = cli.run("environment", "list", "-n", "big", "-o", "tsv", "--query", "[].version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(v) for v in range(48, 0, -1)]
    first = client.list_assets(AssetKind.environment, "big", limit=3)
    assert [a.doc.spec.version for a in first] == ["48", "47", "46"]


def test_cli_model_environment_and_data(cli: Cli, tmp_path: Path) -> None:
    (cli.cwd / "model.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/model.schema.json\n"
        "name: my-model\nversion: 1\npath: model-1/model\ntype: custom_model\nstage: Production\n"
    )
    shown = cli.json("model", "create", "-f", "model.yml")
    assert shown["version"] == "1" and shown["type"] == "custom_model"
    assert shown["stage"] == "Production"  # kept, as REST keeps properties.stage
    cli.json("model", "create", "-n", "my-model", "-v", "2", "-p", "model-1/model")
    assert cli.json("model", "show", "-n", "my-model", "-v", "2")["stage"] == "Development"
    staged = cli.json("model", "list", "-n", "my-model", "--stage", "production")
    assert [m["version"] for m in staged] == ["1"]  # type: ignore[index, union-attr]
    (cli.cwd / "server.yml").write_text(
        "name: my-server\nimage: my/server\ninference_config:\n  scoring_route: {port: 5001}\n"
    )
    refused = cli.error("environment", "create", "-f", "server.yml")
    assert "inference_config: a custom container's routes are not honoured" in refused
    (cli.cwd / "windows.yml").write_text("name: my-server\nimage: my/server\nos_type: windows\n")
    refused = cli.error("environment", "create", "-f", "windows.yml")
    assert "os_type 'windows': only Linux is served" in refused
    assert cli.json("environment", "list", "--include-archived") == []
    assert str(shown["id"]).startswith("azureml:/subscriptions/")
    assert str(shown["id"]).endswith("/models/my-model/versions/1")
    # `path` is REST's modelUri form, and it is taken back wherever a path is.
    path = str(shown["path"])
    assert path.startswith("azureml://artifacts/sha256:") and path.endswith("/model/"), path
    again = cli.json("model", "create", "-n", "copied", "-v", "1", "-p", path)
    assert again["path"] == path
    result = cli.run("model", "list", "-o", "tsv", "--query", "[].latest_version")
    assert result.returncode == 0 and result.stdout.split() == ["1", "2"], result.stdout
    containers = cli.json("model", "list")
    assert [(c["name"], c["latest_version"]) for c in containers] == [  # type: ignore[index, union-attr]
        ("copied", "1"),
        ("my-model", "2"),
    ]
    assert "version" not in containers[0]  # type: ignore[operator, index]
    assert str(containers[1]["id"]).endswith("/models/my-model")  # type: ignore[index, call-overload]
    refused = cli.error("model", "create", "-n", "bad", "-p", "azureml://artifacts/sha256:1/m")
    assert "is not an uploaded artifact" in refused
    result = cli.elsewhere("model", "download", "-n", "my-model", "-v", "1", "-p", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my-model/model/sklearn_regression_model.pkl").read_bytes() == (
        cli.cwd / "model-1/model/sklearn_regression_model.pkl"
    ).read_bytes()
    env = cli.json(
        "environment", "create", "-n", "my-env", "-v", "1",
        "--conda-file", "model-1/environment/conda.yaml", "--image", "ubuntu:22.04",
    )  # fmt: skip
    assert env["conda_file"]["name"] == "model-env"  # type: ignore[index]
    (cli.cwd / "data.csv").write_text("a,b\n1,2\n")
    (cli.cwd / "data.yml").write_text("name: my-data\ntype: uri_folder\npath: data.csv\n")
    refused = cli.error("data", "create", "-f", "data.yml")
    assert "is uri_folder but its path is a file; use type: uri_file" in refused
    data = cli.json("data", "create", "-f", "data.yml", "--set", "type=uri_file")
    assert data["type"] == "uri_file" and not str(data["id"]).startswith("azureml:")


def test_downloads_come_from_the_registry_wherever_it_runs(
    cli: Cli, client: RegistryClient, tmp_path: Path
) -> None:
    """`model|data download` stream the stored files from the registry (DownloadArtifact), as
    `az ml model download` works from any machine: a CLI whose state folder is not the
    platform's gets every file byte for byte, a model of several chunks included, and a
    download that cannot be made says why and writes nothing."""
    model = cli.cwd / "big-model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(3 * (1 << 20) + 4321))  # 4 chunks
    (model / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (model / "predict.sh").write_text("#!/bin/sh\n")
    (model / "predict.sh").chmod(0o755)
    (model / "latest.bin").symlink_to("weights.bin")
    cli.json("model", "create", "-n", "big", "-v", "1", "-p", str(model))
    (cli.cwd / "rows.csv").write_text("x\n1\n2\n")
    cli.json("data", "create", "-n", "rows", "-v", "1", "-t", "uri_file", "-p", "rows.csv")
    cli.json("data", "create", "-n", "web", "-v", "1", "-t", "uri_file", "-p", "https://x.y/a.csv")
    dl = tmp_path / "dl"

    result = cli.elsewhere("model", "download", "-n", "big", "-v", "1", "-p", str(dl))
    assert result.returncode == 0, result.stderr
    assert f"Downloaded model big to {dl / 'big' / 'big-model'}." in " ".join(result.stderr.split())
    got = dl / "big" / "big-model"
    files = sorted(p.relative_to(model) for p in model.rglob("*"))
    assert sorted(p.relative_to(got) for p in got.rglob("*")) == files
    for name in files:
        if (model / name).is_file() and not (model / name).is_symlink():
            assert (got / name).read_bytes() == (model / name).read_bytes(), name
    assert (got / "latest.bin").readlink() == Path("weights.bin")
    assert os.access(got / "predict.sh", os.X_OK)
    result = cli.elsewhere("data", "download", "-n", "rows", "-v", "1", "-p", str(dl))
    assert result.returncode == 0, result.stderr
    assert (dl / "rows" / "rows.csv").read_text() == "x\n1\n2\n"
    # Again into the same folder: files are replaced, other files stay (as a copy merges).
    (got / "weights.bin").write_bytes(b"edited")
    (got / "notes.txt").write_text("mine")
    assert cli.elsewhere("model", "download", "-n", "big", "-v", "1", "-p", str(dl)).returncode == 0
    assert (got / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
    assert (got / "notes.txt").read_text() == "mine"

    nothing = tmp_path / "nothing"
    result = cli.elsewhere(
        "model", "download", "-n", "no-such-model", "-v", "1", "-p", str(nothing)
    )
    assert result.returncode == 1 and "no-such-model" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    result = cli.elsewhere("data", "download", "-n", "web", "-v", "1", "-p", str(nothing))
    assert result.returncode == 1
    assert "is a URI (https://x.y/a.csv); nothing to copy" in " ".join(result.stderr.split())
    assert not nothing.exists()
    with pytest.raises(SluiceError) as missing:
        client.download("sha256:" + "0" * 64)
    assert missing.value.code == "NOT_FOUND"
    assert "no artifact sha256:000" in str(missing.value)
    with pytest.raises(SluiceError) as bad:
        client.download("sha256:../../admin-token")
    assert bad.value.code == "INVALID_ARGUMENT"


def test_az_verbs_and_options_for_assets(cli: Cli, client: RegistryClient) -> None:
    """az ml model|environment|data update (generic --set/--add/--remove, --description,
    --stage), create --tags/--stage, list -r, archive/restore --label, environment create's
    -c/-b/-d (az's --dockerfile-path) and data create's -d (az's --description)."""
    made = cli.json(
        "model", "create", "-n", "m", "-v", "1", "-p", "model-1/model",
        "--tags", "team=ml stage=dev", "-s", "Staging",
    )  # fmt: skip
    assert made["tags"] == {"team": "ml", "stage": "dev"} and made["stage"] == "Staging"
    cli.json("model", "update", "-n", "m", "-v", "1", "--set", "tags.stage=prod")
    assert cli.json("model", "show", "-n", "m", "-v", "1")["tags"] == {
        "team": "ml",
        "stage": "prod",
    }
    updated = cli.json(
        "model", "update", "-n", "m", "-l", "latest", "--description", "promoted",
        "--stage", "Production", "--remove", "tags.team",
    )  # fmt: skip
    assert updated["description"] == "promoted" and updated["stage"] == "Production"
    assert updated["tags"] == {"stage": "prod"}
    before = client.get_asset(AssetKind.model, "m:1").doc
    refused = cli.error("model", "update", "-n", "m", "-v", "1", "--set", "type=mlflow_model")
    assert "type cannot change (a version is immutable but for its description, tags" in " ".join(
        refused.split()
    )
    many = ["--set", "tags={" + ", ".join(f'"t{i}": "v"' for i in range(51)) + "}"]
    refused = cli.error("model", "update", "-n", "m", "-v", "1", *many)
    assert "model 'm': tags: 51 given, at most 50 are allowed" in refused
    assert client.get_asset(AssetKind.model, "m:1").doc == before  # nothing changed
    with pytest.raises(SluiceError) as caught:
        client.update_asset(AssetKind.model, "m", "1", description="x", tags={}, stage="",
                            expected_version=before.meta.version + 5)  # fmt: skip
    assert caught.value.code == "ABORTED"

    cli.json("model", "create", "-n", "m", "-p", "model-1/model")  # version 2
    assert len(cli.json("model", "list", "-n", "m", "-r", "1")) == 1
    archived = cli.json("model", "archive", "-n", "m", "-l", "latest")
    assert archived["version"] == "2" and archived["archived"] is True
    assert cli.json("model", "restore", "-n", "m", "-v", "2")["archived"] is False

    env = cli.json("environment", "create", "-n", "e", "-v", "1",
                   "-c", "model-1/environment/conda.yaml", "-i", "python:3.11")  # fmt: skip
    assert env["conda_file"]["name"] == "model-env"  # type: ignore[index]
    context = cli.cwd / "ctx"
    context.mkdir()
    (context / "Alt.Dockerfile").write_text("FROM python:3.11\nRUN pip install numpy<3\n")
    built = cli.json("environment", "create", "-n", "e", "-v", "2", "-b", "ctx",
                     "-d", "Alt.Dockerfile")  # fmt: skip
    assert built["pip_requirements"] == ["numpy<3"] and built["image"] == "python:3.11"
    refused = cli.error("environment", "create", "-n", "e", "-v", "3", "-i", "x", "-d", "D")
    assert "--dockerfile-path names a file in --build-context: give both" in refused
    data = cli.json("data", "create", "-n", "d", "-t", "uri_file",
                    "-p", "https://example.com/rows.csv", "-d", "rows")  # fmt: skip
    assert data["description"] == "rows"


def test_build_context_pip_lines_are_honoured_others_refused(cli: Cli) -> None:
    context = cli.cwd / "ctx"
    context.mkdir()
    (context / "requirements.txt").write_text("joblib>=1.2  # pinned\n")
    (context / "Dockerfile").write_text(
        "FROM mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest\n"
        "RUN apt-get update && \\\n    pip install --no-cache-dir numpy<3 -r requirements.txt\n"
        "RUN conda install -c conda-forge pytorch=2.2\n"
    )
    (cli.cwd / "env.yml").write_text("name: built-env\nversion: 1\nbuild:\n  path: ctx\n")
    result = cli.run("environment", "create", "-f", "env.yml", "-o", "yaml")
    assert result.returncode == 0, result.stderr
    env = yaml.safe_load(result.stdout)
    assert env["pip_requirements"] == ["numpy<3", "joblib>=1.2", "torch==2.2.*"]
    assert env["image"].startswith("mcr.microsoft.com/azureml/minimal")
    assert "`RUN apt-get update` is not run by Sluice" in result.stderr
    (context / "Dockerfile").write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    refused = cli.error("environment", "create", "-f", "env.yml", "--set", "version=2")
    assert "no `pip install`, `conda install` or `conda env create -f` line" in refused


def test_bad_references_are_refused_and_nothing_is_stored(
    client: RegistryClient, examples: Path
) -> None:
    client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    model = examples / "online/model-1/model"
    client.create_asset(
        AssetSpec(asset_kind=AssetKind.model, name="m", version="1", type="custom_model",
                  artifact=client.upload(model))
    )  # fmt: skip
    client.create_asset(
        AssetSpec(asset_kind=AssetKind.model, name="old", version="1", type="custom_model",
                  artifact=client.upload(model))
    )  # fmt: skip
    client.archive_asset(AssetKind.model, "old", "1")
    cases = {
        "model=azureml:nope:1": ("NOT_FOUND", "model 'nope' does not exist"),
        "model=azureml:m:9": ("NOT_FOUND", "model 'm' has no version '9' (versions: 1)"),
        "model=azureml:m": ("INVALID_ARGUMENT", "malformed (a version or label is needed)"),
        "model=azureml:m@stable": ("INVALID_ARGUMENT", "unknown label 'stable'"),
        "environment=azureml:AzureML-imaginary-env:1": (
            "NOT_FOUND",
            "curated environment 'AzureML-imaginary-env' is not in Sluice's catalogue; known: ",
        ),
        "environment=azureml://registries/azureml/models/x/versions/1": (
            "INVALID_ARGUMENT",
            "names models, but a environment reference is needed",
        ),
    }
    for override, (code, message) in cases.items():
        spec = load_online_deployment(
            examples / "online/blue-deployment.yml", client.upload, [override]
        ).spec
        with pytest.raises(SluiceError) as caught:
            client.create_online_deployment(spec)
        assert caught.value.code == code, override
        assert message in str(caught.value), (override, str(caught.value))
    bad_conda = examples / "online/model-1/environment/conda.yaml"
    bad_conda.write_text("dependencies:\n  - numpy 1.1|1.2\n")
    spec = load_online_deployment(examples / "online/blue-deployment.yml", client.upload).spec
    with pytest.raises(SluiceError, match="pip cannot express"):
        client.create_online_deployment(spec)
    assert client.list_online_deployments("my-endpoint") == []


def test_archive_hides_a_version_but_blocks_nothing(
    cli: Cli, client: RegistryClient, examples: Path
) -> None:
    """Azure: archiving hides a version from lists and from @latest; "you can still
    continue to reference and use an archived model". Archiving one a deployment uses is
    allowed, and a deployment naming an archived version by its version is created (the
    CLI warns that it is archived)."""
    client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    artifact = client.upload(examples / "online/model-1/model")
    for version in ("1", "2"):
        client.create_asset(
            AssetSpec(asset_kind=AssetKind.model, name="m", version=version, artifact=artifact,
                      type="custom_model")
        )  # fmt: skip
    blue = load_online_deployment(
        examples / "online/blue-deployment.yml", client.upload, ["model=azureml:m:1"]
    ).spec
    client.create_online_deployment(blue)
    archived = cli.json("model", "archive", "-n", "m", "-v", "1")
    assert archived["archived"] is True and archived["used_by"] == ["my-endpoint/blue"]
    assert archived["stage"] == "Archived"

    def versions(*options: str) -> list[str]:
        listed = cli.json("model", "list", "-n", "m", *options)
        return [v["version"] for v in listed]  # type: ignore[index, union-attr]

    assert versions() == ["2"]
    assert versions("--include-archived") == ["2", "1"]
    assert versions("--archived-only") == ["1"]
    assert cli.json("model", "show", "-n", "m", "--label", "latest")["version"] == "2"
    assert client.get_online_deployment("my-endpoint", "blue").spec.model.asset == "m:1"

    created = cli.run(
        "online-deployment", "create", "-f", "blue-deployment.yml",
        "--set", "name=green", "--set", "model=azureml:m:1", "--no-wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "model m version 1 is archived (hidden from lists and from @latest)" in " ".join(
        created.stderr.split()
    )
    assert client.get_online_deployment("my-endpoint", "green").spec.model.asset == "m:1"
    assert client.get_asset(AssetKind.model, "m:1").used_by == (
        "my-endpoint/blue",
        "my-endpoint/green",
    )
    # With every version archived, @latest names none (an explicit version still does).
    cli.json("model", "archive", "-n", "m")
    missing = cli.error("model", "show", "-n", "m", "--label", "latest")
    assert "(or every version of it is archived)" in missing
    assert cli.json("model", "show", "-n", "m", "-v", "2")["archived"] is True


def _serve(provisioner: RunningService, address: str, body: bytes) -> object:
    """Score one instance directly, with the header only the gateway has (gateway_auth)."""
    secret = gateway_auth.secret_for(provisioner.settings.secret_key or "", "my-endpoint", "blue")
    response = httpx.post(
        f"http://{address}/score", content=body, headers={gateway_auth.HEADER: secret}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.timeout(600)  # builds an environment and starts an instance on a busy machine
def test_azure_sample_flow_registered_model_and_environment(
    provisioner: RunningService,
    registry: RunningService,
    trained_examples: Path,
    in_process: InProcessCli,
) -> None:
    """az ml model create + environment create, then a deployment naming both by reference."""
    cli = Cli(in_process, registry, trained_examples / "online")
    cli.json("model", "create", "-n", "my-model", "-v", "1", "-p", "model-1/model")
    cli.json(
        "environment", "create", "-n", "my-env", "-v", "1",
        "--conda-file", "model-1/environment/conda.yaml",
    )  # fmt: skip
    (trained_examples / "online/registered.yml").write_text(
        yaml.safe_dump(
            {
                "name": "blue",
                "endpoint_name": "my-endpoint",
                "model": "azureml:my-model:1",
                "environment": "azureml:my-env:1",
                "code_configuration": {
                    "code": "model-1/onlinescoring/",
                    "scoring_script": "score.py",
                },
                "instance_type": "Standard_DS3_v2",
                "instance_count": 1,
            }
        )
    )
    assert cli.run("online-endpoint", "create", "-f", "endpoint.yml").returncode == 0
    created = cli.run("online-deployment", "create", "-f", "registered.yml", "--no-wait")
    assert created.returncode == 0, created.stderr
    with RegistryClient(registry.address, registry.settings.admin_token or "") as client:
        doc = wait_for(lambda: settled(client), "blue to settle", deadline=500)
        assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
        assert (
            doc.spec.model.asset == "my-model:1" and doc.spec.environment.registered == "my-env:1"
        )
        body = (trained_examples / "online/sample-request.json").read_bytes()
        assert len(_serve(provisioner, doc.instances[0].address, body)) == 2  # type: ignore[arg-type]
        used = client.get_asset(AssetKind.model, "my-model:1").used_by
        assert used == ("my-endpoint/blue",)
    # As on Azure, archiving a version in use only hides it: the deployment keeps it.
    archived = cli.json("model", "archive", "-n", "my-model", "-v", "1")
    assert archived["archived"] is True and archived["used_by"] == ["my-endpoint/blue"]
    assert cli.json("environment", "archive", "-n", "my-env")["archived"] is True
    with RegistryClient(registry.address, registry.settings.admin_token or "") as client:
        kept = client.get_online_deployment("my-endpoint", "blue")
        assert kept.meta.provisioning_state is ProvisioningState.succeeded
        assert kept.spec.model.asset == "my-model:1"


CURATED_SCORE = """
import json
import sklearn
from sklearn.linear_model import LinearRegression

model = None

def init():
    global model
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 2.0, 4.0])

def run(raw_data):
    rows = json.loads(raw_data)["data"]
    return {"sklearn": sklearn.__version__, "predictions": model.predict(rows).tolist()}
"""


@pytest.mark.timeout(600)
def test_curated_sklearn_environment_builds_and_serves(
    provisioner: RunningService, client: RegistryClient, examples: Path
) -> None:
    code = examples / "curated-code"
    code.mkdir()
    (code / "score.py").write_text(CURATED_SCORE)
    client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    spec = load_online_deployment(
        examples / "online/blue-deployment.yml",
        client.upload,
        [
            "model=null",
            "code_configuration.code=../curated-code",
            "environment=azureml://registries/azureml/environments/sklearn-1.5/labels/latest",
        ],
    ).spec
    stored = client.create_online_deployment(spec)
    assert "scikit-learn~=1.5.0" in stored.spec.environment.pip_requirements
    doc = wait_for(lambda: settled(client), "blue to settle", deadline=500)
    assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
    answer = _serve(provisioner, doc.instances[0].address, b'{"data": [[3.0]]}')
    assert isinstance(answer, dict) and answer["sklearn"].startswith("1.5.")
    assert answer["predictions"] == pytest.approx([6.0])


async def test_used_by_names_the_latest_jobs_only(
    client: RegistryClient, mongo_db: AsyncDatabase[Document]
) -> None:
    """A data set scored every hour: its lineage names every deployment but only the
    USED_BY_JOBS latest jobs, newest first, so reading it stays small."""
    spec = AssetSpec(
        asset_kind=AssetKind.data, name="hourly", version="1", type="uri_file",
        path="https://example.com/rows.csv",
    )  # fmt: skip
    client.create_asset(spec)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # The batch service's job records, as it writes them (lineage in `assets`).
    await mongo_db["batch_jobs"].insert_many(
        [
            {
                "_id": f"job-{i:03d}",
                "assets": ["data:hourly:1"],
                "state": "Completed",
                "created_at": start + timedelta(hours=i),
            }
            for i in range(USED_BY_JOBS + 5)
        ]
    )
    used = client.get_asset(AssetKind.data, "hourly:1").used_by
    newest = USED_BY_JOBS + 4
    assert list(used) == [f"job job-{i:03d}" for i in range(newest, newest - USED_BY_JOBS, -1)]
