"""Environment specs -> pip requirements, and the instance-type catalogue."""

from __future__ import annotations

import sys

import pytest
from packaging.version import Version

from sluice.common import interpreters
from sluice.common.catalogue import Catalogue, UnknownInstanceType
from sluice.common.environments import EnvironmentError_, resolve
from sluice.common.interpreters import Interpreter, choose
from sluice.common.resources import EnvironmentSpec

CONDA = """
name: model-env
dependencies:
  - python=3.8
  - numpy=1.26
  - pip
  - pip:
      - scikit-learn==1.5.2
      - azureml-defaults
      - joblib
"""


def test_conda_file_becomes_sorted_pip_requirements_with_warnings() -> None:
    resolved = resolve(EnvironmentSpec(conda_file=CONDA, image="mcr.microsoft.com/x:latest"))
    assert resolved.requirements == ("joblib", "numpy==1.26.*", "scikit-learn==1.5.2")
    text = "\n".join(resolved.warnings)
    assert "conda asks for python==3.8.*;" in text
    assert f"instances run Python {interpreters.platform_interpreter().version}" in text
    assert "'azureml-defaults' is not installed: Sluice's inference server replaces it" in text
    assert "installed from PyPI: numpy=1.26 -> numpy==1.26.*" in text
    assert "image 'mcr.microsoft.com/x:latest' is ignored" in text


def test_same_requirements_share_one_environment() -> None:
    a = resolve(EnvironmentSpec(pip_requirements=("joblib", "scikit-learn")))
    b = resolve(
        EnvironmentSpec(conda_file="dependencies:\n  - pip:\n    - scikit-learn\n    - joblib\n")
    )
    assert a.key == b.key
    assert resolve(EnvironmentSpec(pip_requirements=("joblib",))).key != a.key


def test_no_requirements_means_the_platform_environment() -> None:
    assert resolve(EnvironmentSpec()).requirements == ()
    ours = f"python={sys.version_info[0]}.{sys.version_info[1]}"
    assert not resolve(EnvironmentSpec(conda_file=f"dependencies:\n  - {ours}\n")).warnings


PLATFORM = Interpreter("/venv/bin/python", Version("3.11.7"))
MACHINE = [
    Interpreter("/usr/bin/python3.11", Version("3.11.2")),
    Interpreter("/opt/py/3.12/bin/python3.12", Version("3.12.1")),
    Interpreter("/opt/py/3.8/bin/python3.8", Version("3.8.18")),
]


@pytest.mark.parametrize(
    ("specifier", "path", "warning"),
    [
        ("", "/venv/bin/python", ""),
        ("==3.11.*", "/venv/bin/python", ""),
        (">=3.9", "/venv/bin/python", ""),
        ("==3.11.2.*", "/usr/bin/python3.11", ""),  # same minor: honoured
        ("==3.8.*", "/venv/bin/python", "Python 3.8.18 is on this machine, but the inference"),
        ("==3.7.*", "/venv/bin/python", "no such interpreter is on this machine"),
    ],
)
def test_python_request_honoured_when_an_interpreter_fits(
    specifier: str, path: str, warning: str
) -> None:
    choice = choose(specifier, MACHINE, PLATFORM)
    assert choice.interpreter.path == path
    assert warning in choice.warning and bool(choice.warning) == bool(warning)


@pytest.mark.integration  # starts a process
def test_discovery_finds_the_platform_minor() -> None:
    found = interpreters.discover()
    ours = interpreters.platform_interpreter()
    assert any(i.minor == ours.minor for i in found)


def test_unreadable_conda_file_fails_the_build_with_the_entry() -> None:
    with pytest.raises(EnvironmentError_, match="alternatives"):
        resolve(EnvironmentSpec(conda_file="dependencies: [numpy 1|2]"))


def test_catalogue_resolves_azure_names() -> None:
    catalogue = Catalogue.load()
    ds3 = catalogue.resolve("standard_ds3_v2")
    assert (ds3.vcpus, ds3.memory_gb) == (4, 14) and ds3.price_per_hour > 0
    assert catalogue.resolve("").name == catalogue.default
    with pytest.raises(UnknownInstanceType, match="is not in the catalogue"):
        catalogue.resolve("Standard_Imaginary_v9")
