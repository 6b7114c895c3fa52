"""The CLI starts without the services' heavy clients: each `sluice` call pays its imports,
and nats-py (with aiohttp), faststream and pymongo cost about a second of CPU together.
They load when a command needs them (a wait on the gateway, a local database user)."""

import subprocess
import sys

import pytest

HEAVY = ("pymongo", "nats", "faststream", "aiohttp")


@pytest.mark.integration  # a fresh interpreter: a process
def test_importing_the_cli_loads_no_nats_faststream_or_pymongo() -> None:
    probe = f"import sys, sluice.sdk.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"imported at CLI start: {out.stdout.strip()}"


def test_the_lazy_event_names_still_resolve() -> None:
    import sluice.common.events as events
    from sluice.common.events.outbox import Outbox

    assert events.Outbox is Outbox
    assert callable(events.durable_subscriber)
