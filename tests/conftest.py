"""Fixtures shared by the cross-service tests: a running registry and its client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.sdk.client import RegistryClient
from sluice.testing.plugin import RunningService, ServiceStarter, traversable_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def registry(start_service: ServiceStarter) -> RunningService:
    return start_service("registry")


@pytest.fixture
def client(registry: RunningService) -> Iterator[RegistryClient]:
    assert registry.settings.admin_token
    with RegistryClient(registry.address, registry.settings.admin_token, actor="tester") as c:
        yield c


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of examples/ with stand-in model files (the registry never loads them)."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("model", "__pycache__"))
    for folder in ("online/model-1/model", "online/model-2/model", "batch/model"):
        (copy / folder).mkdir(parents=True)
        (copy / folder / "sklearn_regression_model.pkl").write_bytes(b"stand-in model bytes")
    return copy


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/ with its models trained once per session (scikit-learn's diabetes data)."""
    copy = tmp_path_factory.mktemp("trained") / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns("model", "__pycache__"))
    subprocess.run([sys.executable, str(copy / "train_models.py")], check=True, timeout=120)
    return copy


@pytest.fixture
def trained_examples(trained_models: Path, tmp_path: Path) -> Path:
    """A private copy of the trained examples, safe to edit."""
    copy = tmp_path / "trained-examples"
    shutil.copytree(trained_models, copy)
    return copy


@pytest.fixture(scope="session")
def envs_dir() -> Iterator[Path]:
    """Built environments shared by the session's provisioners (as on one real host)."""
    with traversable_dir("sluice-envs-") as folder:
        yield folder


@pytest.fixture
def provisioner(
    start_service: ServiceStarter, registry: RunningService, envs_dir: Path
) -> RunningService:
    start_service.settings = start_service.settings.model_copy(update={"envs_dir": envs_dir})
    return start_service("provisioner")
