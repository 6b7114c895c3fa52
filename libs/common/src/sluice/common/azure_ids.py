"""Azure-style resource ids, so `--query id -o tsv` gives a stable path a script can reuse.

Sluice has one workspace; its ids use a fixed subscription, resource group and
workspace so they look and parse like Azure's
(`/subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/
workspaces/<ws>/onlineEndpoints/<e>`), and the asset ids (`azureml:/.../models/<n>/
versions/<v>`) are accepted back wherever a reference is.
"""

from __future__ import annotations

from sluice.common.assets import AssetKind

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "sluice"
WORKSPACE = "sluice"
WORKSPACE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
    f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)


def resource_id(*segments: str) -> str:
    """`resource_id("onlineEndpoints", "e", "deployments", "d")` -> the workspace path + them."""
    return "/".join([WORKSPACE_ID, *segments])


def asset_id(kind: AssetKind, name: str, version: str) -> str:
    """Models and environments print with Azure's `azureml:` prefix, data without (as Azure)."""
    path = resource_id(kind.plural, name, "versions", version)
    return path if kind is AssetKind.data else f"azureml:{path}"


def asset_container_id(kind: AssetKind, name: str) -> str:
    """A name's container (all its versions), as `az ml <kind> list` without --name prints."""
    path = resource_id(kind.plural, name)
    return path if kind is AssetKind.data else f"azureml:{path}"
