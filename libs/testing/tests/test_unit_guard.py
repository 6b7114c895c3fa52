"""`make test-unit` starts no process: a unit test that tries fails, saying to mark it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest


def test_a_unit_test_cannot_start_a_process() -> None:
    with pytest.raises(AssertionError, match="not marked integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_nor_through_asyncio() -> None:
    with pytest.raises(AssertionError, match="not marked integration"):
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")


@pytest.mark.integration
def test_an_integration_test_can() -> None:
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
