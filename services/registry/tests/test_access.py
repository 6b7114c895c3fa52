"""Roles over both faces of the registry, gRPC (Registry) and REST (Workspace), and the
other services that check the same tokens (sluice.common.access)."""

from __future__ import annotations

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
