"""Roles over both faces of the registry, gRPC (Registry) and REST (Workspace), and the
other services that check the same tokens (sluice.common.access)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.access import LOG_TAIL_HIDDEN, Role, allowed, with_log_tail
from sluice.common.grpc_server import CALLER_READS_LOGS
from sluice.common.resources import (
    ArtifactRef,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    Meta,
    ModelRef,
    OnlineDeployment,
    OnlineDeploymentSpec,
)
from sluice.registry import arm
from sluice.registry.api import RegistryApi


@pytest.mark.parametrize(
    ("method", "reader", "deployer"),
    [
        ("/sluice.v1.Workspace/GetOnlineEndpoint", True, True),
        ("/sluice.v1.Workspace/ListOnlineDeployments", True, True),
        ("/sluice.v1.Workspace/ListKeys", False, True),  # keys are secrets, as in Azure
        ("/sluice.v1.Workspace/GetToken", False, True),
        ("/sluice.v1.Workspace/PutOnlineEndpoint", False, True),
        ("/sluice.v1.Registry/GetCredentials", False, True),
        ("/sluice.v1.Access/ListUserTokens", False, False),
        ("/sluice.v1.Batch/ListJobs", True, True),
        ("/sluice.v1.Batch/CancelJob", False, True),
        ("/sluice.v1.Batch/StreamJobLogs", False, True),
        ("/sluice.v1.Provisioner/GetLogs", False, True),  # what scoring code printed
        ("/sluice.v1.Provisioner/GetDeploymentLogs", False, True),  # the same, REST-shaped
        ("/sluice.v1.Provisioner/GetCollected", False, True),  # what callers sent
        ("/sluice.v1.Metrics/GetCosts", True, True),
        # Cost Management's query: a POST over REST, but it changes nothing.
        ("/sluice.v1.Metrics/QueryCosts", True, True),
        # A model's or data's files, as Azure's Reader downloads registered models...
        ("/sluice.v1.Registry/DownloadArtifact", True, True),
        # ...but not what a job's model made of callers' data (read as logs are).
        ("/sluice.v1.Batch/DownloadJobOutput", False, True),
        ("/sluice.v1.RequestLogs/GetRequestLogs", False, True),
        ("/sluice.v1.Autoscale/CreateAutoscaleSetting", False, True),
    ],
)
def test_roles(method: str, reader: bool, deployer: bool) -> None:
    assert allowed(Role.reader, method) is reader
    assert allowed(Role.deployer, method) is deployer
    assert allowed(Role.admin, method)


def test_no_read_of_logs_keys_tokens_or_callers_data_is_open_to_readers() -> None:
    """Every Get/List call of the protos whose name says it returns a secret, a log or
    what callers sent is refused to readers: a new alias of one cannot slip through."""
    methods = set()
    for proto in (Path(__file__).parents[3] / "proto/sluice/v1").glob("*.proto"):
        service = ""
        for line in proto.read_text().splitlines():
            if found := re.match(r"service (\w+)", line):
                service = found[1]
            elif found := re.match(r"\s*rpc ((?:Get|List)\w+)\(", line):
                methods.add(f"/sluice.v1.{service}/{found[1]}")
    secret = {m for m in methods if re.search(r"Logs|Keys|Token|Credentials|Collected", m)}
    assert "/sluice.v1.Provisioner/GetDeploymentLogs" in secret
    assert [m for m in sorted(secret) if allowed(Role.reader, m)] == []


def test_only_the_read_only_calls_not_named_get_or_list_are_open_to_readers() -> None:
    """Every other call of the protos changes something or reads what callers sent (a
    job's output): readers may not make it."""
    calls = set()
    for proto in (Path(__file__).parents[3] / "proto/sluice/v1").glob("*.proto"):
        service = ""
        for line in proto.read_text().splitlines():
            if found := re.match(r"service (\w+)", line):
                service = found[1]
            elif found := re.match(r"\s*rpc (\w+)\(", line):
                calls.add(f"/sluice.v1.{service}/{found[1]}")
    opened = {c for c in calls if allowed(Role.reader, c) and "/Get" not in c and "/List" not in c}
    assert opened == {"/sluice.v1.Metrics/QueryCosts", "/sluice.v1.Registry/DownloadArtifact"}
    assert "/sluice.v1.Batch/DownloadJobOutput" in calls  # a call of the protos, refused


FAILED = with_log_tail(
    "instance blue-1 exited with code 1 before it was ready (init() failed?).",
    "Traceback ...\nValueError: the customer's row 17: alice@example.com",
)


@pytest.fixture
def reader_call() -> Iterator[None]:
    """The call in progress is a reader's (as BearerTokenInterceptor sets it)."""
    reset = CALLER_READS_LOGS.set(False)
    yield
    CALLER_READS_LOGS.reset(reset)


def _failed_docs() -> tuple[OnlineDeployment, BatchDeploymentDoc]:
    meta = Meta(status_message=FAILED)
    model = ModelRef(artifact=ArtifactRef(digest="sha256:" + "a" * 64, name="model"))
    online = OnlineDeploymentSpec(name="blue", endpoint_name="ep", model=model)
    batch = BatchDeploymentSpec(name="b", endpoint_name="bep", model=model, compute="cpu")
    return OnlineDeployment(spec=online, meta=meta), BatchDeploymentDoc(spec=batch, meta=meta)


def _shown(online: OnlineDeployment, batch: BatchDeploymentDoc) -> list[str]:
    """The status message of each view a caller reads: CLI (Registry) and REST (Workspace)."""
    return [
        RegistryApi._online_deployment(online).meta.status_message,
        RegistryApi._batch_deployment(batch).meta.status_message,
        arm.online_deployment(online).properties.status_message,
        arm.batch_deployment(batch).properties.status_message,
    ]


def test_a_failed_deployments_log_lines_are_not_shown_to_readers(reader_call: None) -> None:
    """What init() printed is a log, which a reader may not read (audit-rest finding 15):
    the status says why it failed and that the lines were left out."""
    for shown in _shown(*_failed_docs()):
        assert shown.startswith("instance blue-1 exited with code 1 before it was ready")
        assert "alice@example.com" not in shown and "Traceback" not in shown
        assert shown.endswith(LOG_TAIL_HIDDEN)


def test_callers_who_may_read_logs_see_the_log_lines() -> None:
    assert _shown(*_failed_docs()) == [FAILED] * 4
