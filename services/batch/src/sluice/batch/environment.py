"""The environment of an MLflow model scored without a script: the model's own.

It is read as online deployments read it (`sluice.common.mlflow_env`:
`conda.yaml`, else `requirements.txt`). When the model asks for the
platform's Python, requirements the platform already satisfies (its
installed version matches the specifier) and those whose environment marker
does not apply here are left out, so a model logged with the platform's own
packages runs at once in the platform's environment, and only real
differences build a virtualenv (in the provisioner's shared cache). A model
of another Python gets its whole environment built, as online.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet

from sluice.common.conda import CondaSpecError, parse_conda_file
from sluice.common.mlflow_env import mlflow_environment
from sluice.common.resources import EnvironmentSpec

# A requirement is met by any of these distributions (MLflow logs `mlflow`; Sluice ships
# the same code as `mlflow-skinny`).
PLATFORM_PYTHON = ".".join(map(str, sys.version_info[:3]))

PROVIDERS = {"mlflow": ("mlflow", "mlflow-skinny")}


def needed(line: str) -> bool:
    """Whether a requirement line asks for something this platform does not have."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return True  # let the installer say what is wrong with it
    if requirement.marker is not None and not requirement.marker.evaluate():
        return False
    name = requirement.name.lower().replace("_", "-")
    for dist in PROVIDERS.get(name, (name,)):
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        if requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


def platform_python(specifier: str) -> bool:
    """Whether `python<specifier>` is the platform's Python: it fits, or names its minor
    (MLflow writes the patch release it was logged on, `python=3.11.5`)."""
    if SpecifierSet(specifier).contains(PLATFORM_PYTHON, prereleases=True):
        return True
    minors = re.findall(r"(\d+)\.(\d+)", specifier)
    return bool(minors) and all(tuple(map(int, m)) == sys.version_info[:2] for m in minors)


def model_environment(model: Path) -> EnvironmentSpec:
    folder = model if model.is_dir() else model.parent
    spec = mlflow_environment(folder)
    if not spec.conda_file:
        return spec
    try:
        conda = parse_conda_file(spec.conda_file)
    except CondaSpecError:
        return spec  # the build says what is wrong with it
    if conda.python and not platform_python(conda.python):
        return spec
    return EnvironmentSpec(pip_requirements=tuple(r for r in conda.requirements if needed(r)))
