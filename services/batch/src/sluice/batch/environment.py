"""The environment of an MLflow model scored without a script: its own `requirements.txt`.

Requirements the platform already satisfies at the pinned version are left
out, so a model logged with the platform's own packages runs at once in the
platform's environment, and only real differences build a virtualenv (in
the provisioner's shared cache).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from sluice.common.resources import EnvironmentSpec

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;]+)\s*$")


def _satisfied(requirement: str) -> bool:
    match = PIN.match(requirement)
    if match is None:
        return False
    try:
        return metadata.version(match.group(1)) == match.group(2)
    except metadata.PackageNotFoundError:
        return False


def model_environment(model: Path) -> EnvironmentSpec:
    folder = model if model.is_dir() else model.parent
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return EnvironmentSpec()
    wanted = [
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.strip().startswith(("#", "-"))
    ]
    return EnvironmentSpec(pip_requirements=tuple(r for r in wanted if not _satisfied(r)))
