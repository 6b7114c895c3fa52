"""Fixtures shared by the cross-service tests: a running registry and its client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.testing.plugin import RunningService, ServiceStarter
from sluice.sdk.client import RegistryClient

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
