"""Azure's spellings of asset references, and the curated environment catalogue."""

from __future__ import annotations

import pytest

from sluice.common.assets import AssetKind, AssetRef, ReferenceError_, parse_reference
from sluice.common.curated import CuratedCatalogue, UnknownCuratedEnvironment
from sluice.common.environments import resolve
from sluice.common.resources import EnvironmentSpec

M, E, D = AssetKind.model, AssetKind.environment, AssetKind.data
ARM = "/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w"


@pytest.mark.parametrize(
    ("text", "kind", "ref"),
    [
        ("azureml:my-model:1", M, AssetRef(M, "my-model", "1")),
        ("my-model:1", M, AssetRef(M, "my-model", "1")),
        ("azureml:heart-classifier@latest", M, AssetRef(M, "heart-classifier", label="latest")),
        ("azureml:my_data.v2:2024.1", D, AssetRef(D, "my_data.v2", "2024.1")),
        (
            "azureml://registries/azureml/environments/sklearn-1.5/labels/latest",
            E,
            AssetRef(E, "sklearn-1.5", label="latest", registry="azureml"),
        ),
        (
            "azureml://registries/shared/models/m/versions/3",
            M,
            AssetRef(M, "m", "3", registry="shared"),
        ),
        (f"azureml:{ARM}/models/m/versions/4", M, AssetRef(M, "m", "4")),
        (f"{ARM}/data/d/versions/5", D, AssetRef(D, "d", "5")),
        ("AzureML-sklearn-1.5:21", E, AssetRef(E, "AzureML-sklearn-1.5", "21")),
    ],
)
def test_references(text: str, kind: AssetKind, ref: AssetRef) -> None:
    assert parse_reference(text, kind) == ref


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("azureml:my-model", M, "a version or label is needed"),
        ("azureml:m@stable", M, "unknown label 'stable'"),
        ("azureml://registries/azureml/models/m/versions/1", E, "names models"),
        ("azureml://registries/r/models", M, "malformed"),
        ("azureml:/subscriptions/x/models/m", M, "malformed"),
        ("my model:1", M, "malformed"),
    ],
)
def test_malformed_references_show_the_accepted_forms(
    text: str, kind: AssetKind, message: str
) -> None:
    with pytest.raises(ReferenceError_, match=message):
        parse_reference(text, kind)


def test_references_print_as_azure_writes_them() -> None:
    assert str(AssetRef(M, "m", "1")) == "azureml:m:1"
    assert str(AssetRef(M, "m", label="latest")) == "azureml:m@latest"
    curated = AssetRef(E, "sklearn-1.5", label="latest", registry="azureml")
    assert str(curated) == "azureml://registries/azureml/environments/sklearn-1.5/labels/latest"


def test_curated_catalogue_knows_both_spellings_and_lists_names_when_unknown() -> None:
    catalogue = CuratedCatalogue.load()
    assert "scikit-learn~=1.5.0" in catalogue.get("sklearn-1.5").pip
    assert catalogue.get("AzureML-sklearn-1.5") == catalogue.get("SKLEARN-1.5")
    assert catalogue.get("AzureML-minimal-ubuntu18.04-py37-cpu-inference").pip == ()
    for family in ("mlflow", "lightgbm", "xgboost", "pytorch"):
        assert any(family in name for name in catalogue.names), family
    with pytest.raises(UnknownCuratedEnvironment, match=r"known: lightgbm-3\.3, minimal-py311"):
        catalogue.get("AzureML-imaginary-1.0")


def test_curated_notes_become_environment_warnings() -> None:
    old = "azureml:AzureML-xgboost-0.9-ubuntu18.04-py37-cpu-inference:1"
    resolved = resolve(EnvironmentSpec(registered=old, pip_requirements=("xgboost~=1.7",)))
    assert any("xgboost 0.9 has no wheels" in w for w in resolved.warnings)
    assert CuratedCatalogue.load().note_for("azureml:my-env:1") == ""
