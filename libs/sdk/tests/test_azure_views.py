"""The CLI's Azure-shaped views print only values Azure's own CLI prints."""

from __future__ import annotations

from sluice.common.resources import ProvisioningState
from sluice.sdk.azure_views import azure_state

# azure-round2 section 1.2: a deployment's and an endpoint's provisioning_state.
AZURE_STATES = {"Creating", "Updating", "Deleting", "Succeeded", "Failed", "Canceled"}


def test_every_provisioning_state_is_one_azure_prints() -> None:
    assert {azure_state(state) for state in ProvisioningState} == AZURE_STATES
    # A first version still starting is Creating (as REST says): a script polling waits.
    assert azure_state(ProvisioningState.provisioning) == "Creating"
