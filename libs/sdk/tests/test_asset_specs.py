"""Asset YAML: what the CLI keeps, warns about or refuses answers as REST does for the same
field (stage kept; job_name, os_type other than linux and inference_config refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.common.artifacts import artifact_uri
from sluice.common.assets import AssetKind, AssetSpec
from sluice.common.resources import ArtifactRef, EnvironmentSpec
from sluice.sdk.asset_specs import load_asset
from sluice.sdk.specs import Loaded, SpecError, load_batch_deployment, load_online_deployment


def fake_upload(path: Path) -> ArtifactRef:
    return ArtifactRef(digest="sha256:" + "0" * 64, name=path.name, is_directory=path.is_dir())


def load(kind: AssetKind, folder: Path, text: str) -> tuple[AssetSpec, list[str]]:
    (folder / "model.pkl").write_bytes(b"m")
    (folder / "asset.yml").write_text(text)
    loaded = load_asset(kind, folder / "asset.yml", fake_upload, fields={})
    return loaded.spec, loaded.warnings


def test_stage_is_kept_for_every_kind(tmp_path: Path) -> None:
    spec, warnings = load(
        AssetKind.model, tmp_path, "name: m\nversion: 1\npath: model.pkl\nstage: Production\n"
    )
    assert spec.stage == "Production" and warnings == []
    spec, _ = load(AssetKind.environment, tmp_path, "name: e\nimage: python:3.11\nstage: Dev\n")
    assert spec.stage == "Dev"
    spec, _ = load(
        AssetKind.data, tmp_path, "name: d\ntype: uri_file\npath: model.pkl\nstage: Gold\n"
    )
    assert spec.stage == "Gold"


def test_flavors_are_read_from_the_mlmodel_file_with_a_warning(tmp_path: Path) -> None:
    _, warnings = load(
        AssetKind.model, tmp_path, "name: m\npath: model.pkl\nflavors:\n  python_function: {}\n"
    )
    assert warnings == [f"{tmp_path / 'asset.yml'}: flavors is read from the model's MLmodel "
                        "file here; ignored"]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            AssetKind.model,
            "name: m\npath: model.pkl\njob_name: train-1\n",
            "job_name: Sluice keeps no job name (it runs no training jobs); leave it out",
        ),
        (
            AssetKind.environment,
            "name: e\nimage: mcr.microsoft.com/windows/servercore\nos_type: windows\n",
            "os_type 'windows': only Linux is served",
        ),
        (
            AssetKind.environment,
            "name: e\nimage: my/server\ninference_config:\n"
            "  scoring_route: {port: 5001, path: /score}\n",
            "inference_config: a custom container's routes are not honoured",
        ),
    ],
)
def test_fields_rest_refuses_are_refused(
    tmp_path: Path, kind: AssetKind, text: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load(kind, tmp_path, text)
    assert message in str(caught.value) and "asset.yml" in str(caught.value)


def test_os_type_linux_in_any_case_is_fine(tmp_path: Path) -> None:
    spec, warnings = load(AssetKind.environment, tmp_path, "name: e\nimage: i\nos_type: Linux\n")
    assert spec.image == "i" and warnings == []


DIGEST = "sha256:" + "ab" * 32


def test_an_uploaded_artifact_is_taken_back_by_the_uri_show_prints(tmp_path: Path) -> None:
    """`model show --query path` prints azureml://artifacts/...: YAML `path:` takes it back
    (no upload), for models and data, as a deployment's `model:` does."""
    spec, _ = load(
        AssetKind.model, tmp_path, f"name: m\npath: azureml://artifacts/{DIGEST}/model/\n"
    )
    assert spec.artifact == ArtifactRef(digest=DIGEST, name="model", is_directory=True)
    assert artifact_uri(spec.artifact) == f"azureml://artifacts/{DIGEST}/model/"
    spec, _ = load(
        AssetKind.data,
        tmp_path,
        f"name: d\ntype: uri_file\npath: azureml://artifacts/{DIGEST}/a.csv\n",
    )
    assert spec.artifact == ArtifactRef(digest=DIGEST, name="a.csv") and spec.path == ""
    spec, _ = load(AssetKind.data, tmp_path, "name: d\ntype: uri_file\npath: https://x/a.csv\n")
    assert spec.artifact is None and spec.path == "https://x/a.csv"
    (tmp_path / "dep.yml").write_text(
        f"name: blue\nendpoint_name: e\nmodel: azureml://artifacts/{DIGEST}/model/\n"
        "instance_type: Standard_DS3_v2\ninstance_count: 1\n"
    )
    deployment = load_online_deployment(tmp_path / "dep.yml", fake_upload).spec
    assert deployment.model.artifact == ArtifactRef(digest=DIGEST, name="model", is_directory=True)


@pytest.mark.parametrize(
    "uri",
    ["azureml://artifacts/sha256:12/model", "azureml://artifacts/md5:" + "a" * 64 + "/m",
     f"azureml://artifacts/{DIGEST}/"],
)  # fmt: skip
def test_a_malformed_artifact_uri_is_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(SpecError, match="is not an uploaded artifact"):
        load(AssetKind.model, tmp_path, f"name: m\npath: {uri}\n")


# ---- a deployment's inline `environment: {build: ...}` ---------------------------------------

CONTEXTS = {
    "pip and conda lines": (
        {
            "ctx/Dockerfile": "FROM python:3.11-slim\nCOPY requirements.txt .\n"
            "RUN pip install -r requirements.txt && \\\n    pip install 'scikit-learn==1.5.2'\n"
            "RUN conda install -c conda-forge numpy=1.26\nEXPOSE 5001\n",
            "ctx/requirements.txt": "pandas>=2  # data frames\n",
        },
        "  path: ctx\n",
    ),
    "dockerfile_path and a conda file": (
        {
            "ctx/docker/Alt.Dockerfile": "FROM ubuntu:22.04\nCOPY env.yml .\n"
            "RUN conda env create -f env.yml\n",
            "ctx/env.yml": "dependencies:\n  - python=3.11\n  - pip:\n    - joblib\n",
        },
        "  path: ./ctx\n  dockerfile_path: docker/Alt.Dockerfile\n",
    ),
}


def build_context(folder: Path, files: dict[str, str], build: str) -> None:
    """The context's files, its environment asset YAML and deployments that inline it, all
    in `folder`; the build's relative paths are the YAML's, not the working folder's."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "env.yml").write_text("name: built\nversion: 1\nbuild:\n" + build)
    inline = "environment:\n  name: built\n  version: 1\n  build:\n" + build.replace("  ", "    ")
    (folder / "online.yml").write_text("name: blue\nendpoint_name: e\n" + inline)
    (folder / "batch.yml").write_text("name: nightly\nendpoint_name: be\n" + inline)


def registered(folder: Path) -> Loaded[AssetSpec]:
    return load_asset(AssetKind.environment, folder / "env.yml", fake_upload, fields={})


@pytest.mark.parametrize("context", CONTEXTS.values(), ids=CONTEXTS.keys())
def test_an_inline_build_context_deploys_as_registering_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, context: tuple[dict[str, str], str]
) -> None:
    folder = tmp_path / "yaml"
    folder.mkdir()
    build_context(folder, *context)
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    asset = registered(folder)
    # What the registry hands a deployment of `azureml:built:1` (its resolve_environment).
    expected = EnvironmentSpec(
        conda_file=asset.spec.conda_file,
        image=asset.spec.image,
        pip_requirements=asset.spec.pip_requirements,
    )
    assert expected.image and (expected.pip_requirements or expected.conda_file)
    online = load_online_deployment(folder / "online.yml", fake_upload)
    batch = load_batch_deployment(folder / "batch.yml", fake_upload)
    assert online.spec.environment == expected
    assert batch.spec.environment == expected
    said = [f"environment.{warning}" for warning in asset.warnings]
    assert online.warnings == said and batch.warnings == said


def test_the_inline_build_reads_pip_conda_and_from_lines(tmp_path: Path) -> None:
    build_context(tmp_path, *CONTEXTS["pip and conda lines"])
    spec = load_online_deployment(tmp_path / "online.yml", fake_upload)
    assert spec.spec.environment == EnvironmentSpec(
        image="python:3.11-slim",
        pip_requirements=("pandas>=2", "scikit-learn==1.5.2", "numpy==1.26.*"),
    )
    assert spec.warnings == ["environment.build: `EXPOSE 5001` is ignored (no Docker build here)"]


@pytest.mark.parametrize(
    ("files", "named", "why"),
    [
        ({}, "ctx", "build.path: 'ctx' does not exist"),
        ({"ctx/requirements.txt": "numpy\n"}, "ctx/Dockerfile", "build.dockerfile_path: "
         "'Dockerfile' does not exist"),
        ({"ctx/Dockerfile": "FROM ubuntu\nRUN apt-get install -y curl\n"}, "ctx/Dockerfile",
         "has no `pip install`, `conda install` or `conda env create -f` line Sluice can honour"),
    ],
    ids=["no context folder", "no Dockerfile", "nothing to install"],
)  # fmt: skip
def test_an_unusable_inline_build_is_refused_as_registering_it(
    tmp_path: Path, files: dict[str, str], named: str, why: str
) -> None:
    build_context(tmp_path, files, "  path: ctx\n")
    with pytest.raises(SpecError) as refused:
        registered(tmp_path)
    message = str(refused.value)
    assert why in message and str(tmp_path.resolve() / named) in message
    for load_deployment, yml in (
        (load_online_deployment, "online.yml"),
        (load_batch_deployment, "batch.yml"),
    ):
        with pytest.raises(SpecError) as caught:
            load_deployment(tmp_path / yml, fake_upload)
        assert str(caught.value) == f"environment.{message}"
