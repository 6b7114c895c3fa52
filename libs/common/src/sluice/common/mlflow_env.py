"""The environment an MLflow model was logged with, read from its folder.

MLflow writes it three ways; the first found is used, by online and batch
deployments alike: `conda.yaml` (what Azure reads), else `requirements.txt`
with the Python version of `python_env.yaml`. With none of the files the
model runs in the platform's own environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sluice.common.resources import EnvironmentSpec


def mlflow_environment(folder: Path) -> EnvironmentSpec:
    """A no-code MLflow deployment's environment: the model's own, as on Azure."""
    conda = folder / "conda.yaml"
    if conda.is_file():
        return EnvironmentSpec(conda_file=conda.read_text())
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        return EnvironmentSpec()
    pins = [
        line.strip()
        for line in requirements.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]
    dependencies: list[Any] = [{"pip": pins}]
    python_env = folder / "python_env.yaml"
    if python_env.is_file():
        declared = yaml.safe_load(python_env.read_text()) or {}
        if isinstance(declared, dict) and declared.get("python"):
            dependencies.insert(0, f"python={declared['python']}")
    return EnvironmentSpec(conda_file=yaml.safe_dump({"dependencies": dependencies}))
