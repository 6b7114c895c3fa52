"""The environment of an MLflow model scored without a script: the model's own.

It is read as online deployments read it (`sluice.common.mlflow_env`:
`conda.yaml`, else `requirements.txt`). When its workers run the platform's
Python (the model asks for it, or for a Python this machine does not have, and
then the build warns that the platform's is used), requirements the platform
already satisfies (its installed version matches the specifier) and those
whose environment marker does not apply here are left out, so a model logged
with the platform's own packages runs at once in the platform's environment,
and only real differences build a virtualenv (in the provisioner's shared
cache). A model whose Python is another one this machine has gets its whole
environment built, as online.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from sluice.common.conda import package_name
from sluice.common.environments import EnvironmentError_, ResolvedEnvironment
from sluice.common.mlflow_env import mlflow_environment
from sluice.common.resources import EnvironmentSpec

# A requirement is met by any of these distributions (MLflow logs `mlflow`; Sluice ships
# the same code as `mlflow-skinny`).
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


def model_environment(
    model: Path, resolve: Callable[[EnvironmentSpec], ResolvedEnvironment]
) -> EnvironmentSpec:
    """The model's environment, without what the platform already has when its workers
    run the platform's Python (`resolve`: the environment builder's choice of Python)."""
    folder = model if model.is_dir() else model.parent
    try:
        spec = mlflow_environment(folder)
    except yaml.YAMLError as exc:
        raise EnvironmentError_(f"the MLflow model's python_env.yaml: {exc}") from None
    if not spec.conda_file:
        return spec
    try:
        resolved = resolve(spec)
        declared = yaml.safe_load(spec.conda_file)
    except (EnvironmentError_, yaml.YAMLError):
        return spec  # the build says what is wrong with it
    if resolved.foreign:
        return spec
    # The `python=` line stays: the build warns when it is not the Python used.
    pythons = [
        dep
        for dep in declared.get("dependencies") or []
        if isinstance(dep, str) and package_name(dep) == "python"
    ]
    pins = [requirement for requirement in resolved.requirements if needed(requirement)]
    if not pins and not pythons:
        return EnvironmentSpec()
    return EnvironmentSpec(conda_file=yaml.safe_dump({"dependencies": [*pythons, {"pip": pins}]}))
