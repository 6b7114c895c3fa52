"""The environment of an MLflow model scored without a script: its own `requirements.txt`.

Requirements the platform already satisfies (its installed version matches
the specifier) and those whose environment marker does not apply here are
left out, so a model logged with the platform's own packages runs at once
in the platform's environment, and only real differences build a
virtualenv (in the provisioner's shared cache).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

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


def model_environment(model: Path) -> EnvironmentSpec:
    folder = model if model.is_dir() else model.parent
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return EnvironmentSpec()
    lines = [
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.strip().startswith(("#", "-"))
    ]
    return EnvironmentSpec(pip_requirements=tuple(line for line in lines if needed(line)))
