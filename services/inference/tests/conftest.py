"""Fixtures of the inference tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluice.common.supervisor import Supervisor


@pytest.fixture(scope="module")
def module_supervisor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    """Servers shared by the tests of one module (each module tests one kind of script)."""
    supervisor = Supervisor(tmp_path_factory.mktemp("inference-logs"))
    yield supervisor
    supervisor.stop_all()
