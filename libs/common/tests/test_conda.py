"""Conda match specs -> pip requirements, table-tested on the conda files of Azure's samples."""

from __future__ import annotations

import pytest

from sluice.common.conda import (
    CondaSpecError,
    numpy_1_reasons,
    parse_conda_file,
    parse_match_spec,
)


@pytest.mark.parametrize(
    ("entry", "requirement"),
    [
        ("numpy", "numpy"),
        ("numpy>=1.20", "numpy>=1.20"),  # a lower bound stays a lower bound
        ("numpy<2", "numpy<2"),  # an upper bound is kept
        ("numpy >=1.2,<2", "numpy>=1.2,<2"),
        ("numpy >= 1.2", "numpy>=1.2"),
        ("numpy=1.26", "numpy==1.26.*"),  # conda's `=` is a fuzzy match
        ("numpy==1.26", "numpy==1.26"),
        ("numpy=1.26.*", "numpy==1.26.*"),
        ("numpy 1.8*", "numpy==1.8.*"),
        ("numpy 1.11.1 py36_0", "numpy==1.11.1"),
        ("numpy>=1.2.*", "numpy>=1.2"),
        ("numpy=*", "numpy"),
        ("pandas~=1.5.3", "pandas~=1.5.3"),
        ("scikit-learn=1.0.2=py39h51133e4_1", "scikit-learn==1.0.2"),  # conda env export
        ("conda-forge::scikit-learn=1.2.2", "scikit-learn==1.2.2.*"),
        ("numpy[version='>=1.20,<2']", "numpy>=1.20,<2"),
        ("pytorch=1.11.0=py3.9_cpu_0", "torch==1.11.0"),
        ("py-xgboost=1.5.0", "xgboost==1.5.0.*"),
        ("msgpack-python", "msgpack"),
        ("matplotlib-base>=3.5", "matplotlib>=3.5"),
        ("Scikit_Learn", "scikit-learn"),
    ],
)
def test_match_spec_to_pip(entry: str, requirement: str) -> None:
    assert parse_match_spec(entry).requirement() == requirement


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("numpy 1.11.1|1.11.3", "alternatives"),
        ("numpy=not.a version!", "not one pip understands"),
        ("=1.2", "is not a package spec"),
    ],
)
def test_match_specs_pip_cannot_express_are_errors(entry: str, message: str) -> None:
    with pytest.raises(CondaSpecError, match=message):
        parse_match_spec(entry)


# cli/endpoints/online/model-1/environment/conda.yaml (azureml-examples)
MODEL_1 = """
name: model-env
channels:
  - conda-forge
dependencies:
  - python=3.9
  - numpy=1.23.5
  - pip=23.0.1
  - scikit-learn=1.2.2
  - scipy=1.10.1
  - pip:
    - azureml-defaults==1.49.0
    - inference-schema[numpy-support]==1.5.1
    - joblib==1.2.0
"""

# An MLflow model's conda.yaml (as MLflow writes it next to MLmodel)
MLFLOW = """
channels:
- conda-forge
dependencies:
- python=3.8.13
- pip<=22.3.1
- pip:
  - mlflow<3,>=2.1
  - cloudpickle==2.2.0
  - scikit-learn==1.1.2
name: mlflow-env
"""

# azureml-assets sklearn-1.5 curated environment (context/conda_dependencies.yaml, abridged)
CURATED_SKLEARN = """
name: sklearn-env
channels:
  - conda-forge
dependencies:
  - python=3.10
  - pip=23.3
  - pip:
    - numpy~=1.22
    - pandas~=1.5.3
    - scikit-learn~=1.5.0
    - azureml-inference-server-http
    - joblib~=1.2
"""

# `conda env export` of a pytorch/xgboost environment: build strings and system libraries
EXPORTED = """
name: torch-env
channels:
  - pytorch
  - defaults
dependencies:
  - _libgcc_mutex=0.1=main
  - ca-certificates=2022.3.29=h06a4308_0
  - libgcc-ng=9.3.0=h5101ec6_17
  - openssl=1.1.1n=h7f8727e_0
  - python=3.9.12=h12debd9_0
  - pip=21.2.4=py39h06a4308_2
  - numpy=1.21.5=py39he7a7128_1
  - pytorch=1.11.0=py3.9_cpu_0
  - py-xgboost=1.5.0=py39h06a4308_1
  - cpuonly=2.0=0
  - tzdata=2022a=hda174b7_0
  - pip:
    - azureml-core==1.41.0
"""


@pytest.mark.parametrize(
    ("conda", "requirements", "python"),
    [
        (
            MODEL_1,
            (
                "numpy==1.23.5.*",
                "scikit-learn==1.2.2.*",
                "scipy==1.10.1.*",
                "azureml-defaults==1.49.0",
                "inference-schema[numpy-support]==1.5.1",
                "joblib==1.2.0",
            ),
            "==3.9.*",
        ),
        (MLFLOW, ("mlflow<3,>=2.1", "cloudpickle==2.2.0", "scikit-learn==1.1.2"), "==3.8.13.*"),
        (
            CURATED_SKLEARN,
            (
                "numpy~=1.22",
                "pandas~=1.5.3",
                "scikit-learn~=1.5.0",
                "azureml-inference-server-http",
                "joblib~=1.2",
            ),
            "==3.10.*",
        ),
        (
            EXPORTED,
            ("numpy==1.21.5", "torch==1.11.0", "xgboost==1.5.0", "azureml-core==1.41.0"),
            "==3.9.12",
        ),
    ],
    ids=["model-1", "mlflow", "curated-sklearn", "env-export"],
)
def test_azure_sample_conda_files(conda: str, requirements: tuple[str, ...], python: str) -> None:
    parsed = parse_conda_file(conda)
    assert parsed.requirements == requirements
    assert parsed.python == python


def test_export_reports_what_was_skipped_and_translated() -> None:
    text = "\n".join(parse_conda_file(EXPORTED).warnings)
    assert "(instances use the machine's): _libgcc_mutex, ca-certificates, libgcc-ng" in text
    assert "openssl, cpuonly, tzdata" in text
    assert "pytorch=1.11.0=py3.9_cpu_0 -> torch==1.11.0" in text
    assert "build strings ignored for 4 package(s)" in text


@pytest.mark.parametrize(
    ("conda", "message"),
    [
        ("dependencies: [numpy 1|2]", "alternatives"),
        ("dependencies:\n  - pip:\n    - 'not a requirement!'\n", "is invalid"),
        ("dependencies: numpy", "must be a list"),
        ("- numpy", "must be a mapping"),
        ("dependencies: [{conda: [x]}]", "unexpected entry"),
        ("dependencies: [numpy\n", "not valid YAML"),
    ],
)
def test_unreadable_conda_files_are_errors(conda: str, message: str) -> None:
    with pytest.raises(CondaSpecError, match=message):
        parse_conda_file(conda)


def test_pip_options_are_reported_not_passed() -> None:
    parsed = parse_conda_file(
        "dependencies:\n  - pip:\n    - --extra-index-url https://example.org/simple\n    - x\n"
    )
    assert parsed.requirements == ("x",)
    assert "pip option '--extra-index-url https://example.org/simple'" in parsed.warnings[0]


# cli/endpoints/online/managed/inference-schema/env.yml (azureml-examples): conda-forge's
# scikit-learn 1.2.2 depends on numpy<2, PyPI's wheel only on numpy>=1.17.3.
INFERENCE_SCHEMA = """
name: amlex-infschema
channels:
  - conda-forge
dependencies:
  - python=3.10
  - scikit-learn=1.2.2
  - numpy
  - pandas
  - pip:
    - joblib
    - azureml-inference-server-http==0.7.6
    - inference-schema==1.4
"""


def test_a_conda_pin_built_against_numpy_1_needs_numpy_1() -> None:
    requirements = parse_conda_file(INFERENCE_SCHEMA).requirements
    assert numpy_1_reasons(requirements) == (
        "scikit-learn 1.2.2 predates its NumPy 2 build (1.4.2)",
    )


@pytest.mark.parametrize(
    ("requirements", "reasons"),
    [
        (["scikit-learn==1.2.2"], ["scikit-learn 1.2.2 predates its NumPy 2 build (1.4.2)"]),
        (["scikit-learn==1.2.*"], ["scikit-learn 1.2 predates its NumPy 2 build (1.4.2)"]),
        (["scikit-learn~=1.2.0"], ["scikit-learn ~=1.2.0 predates its NumPy 2 build (1.4.2)"]),
        (["scikit-learn<1.3"], ["scikit-learn <1.3 predates its NumPy 2 build (1.4.2)"]),
        (["scikit-learn<1.4.2"], ["scikit-learn <1.4.2 predates its NumPy 2 build (1.4.2)"]),
        (
            ["scikit-learn>=1.0,<1.4"],
            ["scikit-learn <1.4,>=1.0 predates its NumPy 2 build (1.4.2)"],
        ),
        (
            ["Scikit_Learn == 1.1.3", "numpy"],
            ["scikit-learn 1.1.3 predates its NumPy 2 build (1.4.2)"],
        ),
        (
            ["scipy==1.10.1", "pandas==2.2.1", "torch==2.2.2"],
            [
                "scipy 1.10.1 predates its NumPy 2 build (1.13.0)",
                "pandas 2.2.1 predates its NumPy 2 build (2.2.2)",
                "torch 2.2.2 predates its NumPy 2 build (2.3.0)",
            ],
        ),
        (["scikit-learn==1.4.2"], []),  # the first NumPy 2 build
        (["scikit-learn==1.4.*"], []),  # admits 1.4.2
        (["scikit-learn<=1.4.2"], []),
        (["scikit-learn~=1.2"], []),  # >=1.2, <2
        (["scikit-learn"], []),  # unpinned: uv picks a NumPy 2 build
        (["scikit-learn>=1.0"], []),  # lower bounds only
        (["scikit-learn!=1.5.0"], []),
        (["scikit-learn==1.2.2", "numpy==1.26.4"], []),  # the user's numpy pin decides
        (["scikit-learn==1.2.2", "numpy>=2"], []),  # even one that will not resolve
        (["numpy~=1.22", "scipy==1.10.1"], []),
        (["xgboost==1.5.0", "lightgbm==3.3.5"], []),  # ctypes, not NumPy's C API
        (["/artifacts/code/pkg", "scikit-learn @ https://example.org/sklearn.whl"], []),
    ],
)
def test_pins_of_releases_built_against_numpy_1(
    requirements: list[str], reasons: list[str]
) -> None:
    assert numpy_1_reasons(requirements) == tuple(reasons)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("scikit-learn=1.2.2=py310hf7d194e_1", "scikit-learn 1.2.2 predates"),  # env export
        ("pytorch=1.11.0=py3.9_cpu_0", "torch 1.11.0 predates its NumPy 2 build (2.3.0)"),
        ("matplotlib-base=3.5", "matplotlib 3.5 predates its NumPy 2 build (3.8.4)"),
        ("pyarrow 15.0.2", "pyarrow 15.0.2 predates its NumPy 2 build (16.0.0)"),
        ("scikit-image<0.23", "scikit-image <0.23 predates its NumPy 2 build (0.23.1)"),
    ],
)
def test_conda_spellings_of_old_compiled_packages(entry: str, reason: str) -> None:
    (found,) = numpy_1_reasons([parse_match_spec(entry).requirement()])
    assert found.startswith(reason)
