"""Asset YAML: what the CLI keeps, warns about or refuses answers as REST does for the same
field (stage kept; job_name, os_type other than linux and inference_config refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.common.artifacts import artifact_uri
from sluice.common.assets import AssetKind, AssetSpec
from sluice.common.resources import ArtifactRef
from sluice.sdk.asset_specs import load_asset
from sluice.sdk.specs import SpecError, load_online_deployment


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
