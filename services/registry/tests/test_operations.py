"""Operation ids of the REST API's writes (sluice.registry.operations): they name their
resource exactly, read back from the URI's last segment, and anything else is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.common.resources import Meta, ProvisioningState
from sluice.registry.domain import InvalidArgument
from sluice.registry.operations import Operation, status_of

CREATED = datetime(2026, 11, 29, 16, 30, 5, 123456, tzinfo=UTC)


def test_an_id_names_its_resource_and_reads_back() -> None:
    meta = Meta(created_at=CREATED)
    op = Operation.of("od", meta, "my-endpoint", "blue")
    assert op.name == "od:my-endpoint:blue:1795969805123456"
    assert op.uri("http://127.0.0.1:8090").endswith(
        "/providers/Microsoft.MachineLearningServices/locations/local/mfeOperationsStatus/"
        + op.name
    )
    assert Operation.parse(op.name) == op
    endpoint = Operation.of("oe", meta, "my-endpoint")
    assert Operation.parse(endpoint.name) == endpoint and endpoint.deployment == ""
    assert op.is_of(meta)
    # Stored and read back as naive UTC: the same resource. A namesake made a microsecond
    # later is another.
    assert op.is_of(Meta(created_at=CREATED.replace(tzinfo=None)))
    assert not op.is_of(Meta(created_at=CREATED.replace(microsecond=123457)))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "od:my-endpoint:1",  # a deployment's names its endpoint and deployment
        "oe:my-endpoint:blue:1",  # an endpoint's names no deployment
        "xx:my-endpoint:1",
        "oe:my_endpoint:1",
        "oe:my-endpoint:1:2:3",
        "oe:my-endpoint:12345678901234567890123",
        "oe:../x:1",
    ],
)
def test_other_ids_are_refused_saying_what_they_should_be(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not an operation id"):
        Operation.parse(name)


def test_status_is_the_resource_s_state() -> None:
    expected = {
        ProvisioningState.creating: "InProgress",
        ProvisioningState.updating: "InProgress",
        ProvisioningState.deleting: "InProgress",
        ProvisioningState.succeeded: "Succeeded",
        ProvisioningState.failed: "Failed",
        ProvisioningState.canceled: "Canceled",
    }
    for state, status in expected.items():
        assert status_of(Meta(provisioning_state=state)) == status
