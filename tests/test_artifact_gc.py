"""The registry collects stored artifacts once nothing refers to them (artifact_gc.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.resources import OnlineDeploymentSpec
from sluice.registry.artifact_gc import digests_in
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.plugin import ServiceStarter
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration
GRACE_S = 3.0


@pytest.fixture
def collecting(
    start_service: ServiceStarter, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RegistryClient, Path]]:
    monkeypatch.setenv("SLUICE_ARTIFACT_GC_INTERVAL_S", "0.3")
    monkeypatch.setenv("SLUICE_ARTIFACT_GC_GRACE_S", str(GRACE_S))
    registry = start_service("registry")
    assert registry.settings.admin_token
    with RegistryClient(registry.address, registry.settings.admin_token) as client:
        yield client, registry.settings.state_dir / "artifacts" / "sha256"


def folder(store: Path, digest: str) -> Path:
    return store / digest.removeprefix("sha256:")


def test_unreferenced_artifacts_go_referenced_ones_stay(
    collecting: tuple[RegistryClient, Path], examples: Path, tmp_path: Path
) -> None:
    client, store = collecting
    client.create_online_endpoint(load_online_endpoint(examples / "online/endpoint.yml").spec)
    spec: OnlineDeploymentSpec = load_online_deployment(
        examples / "online/blue-deployment.yml", client.upload
    ).spec
    client.create_online_deployment(spec)
    used = set(digests_in(spec.model_dump(mode="json")))
    assert len(used) == 2  # the model and the code
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("uploaded, never used")
    orphan = client.upload(stray).digest
    assert folder(store, orphan).is_dir()

    started = time.monotonic()
    wait_for(lambda: not folder(store, orphan).exists(), "the orphan to be collected", 30)
    assert time.monotonic() - started >= GRACE_S - 1  # not before its grace period
    assert all(folder(store, d).is_dir() for d in used)

    client.delete_online_deployment(spec.endpoint_name, spec.name)
    wait_for(
        lambda: not any(folder(store, d).exists() for d in used),
        "the deleted deployment's artifacts to be collected",
        30,
    )
