"""Roles over both faces of the registry, gRPC (Registry) and REST (Workspace), and the
other services that check the same tokens (sluice.common.access)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluice.common.access import Role, allowed


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
