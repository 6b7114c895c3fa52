"""A throwaway control plane for benchmarks: nats-server and SecantusDB on free ports.

`with servers(root) as (supervisor, settings):` starts both, yields a
supervisor (to start our services with `start_services`) and settings that
point at them; everything stops when the block ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cryptography.fernet import Fernet

from sluice.common.components import mongo_spec, nats_spec, python_service_spec
from sluice.common.settings import Settings, service_env
from sluice.common.supervisor import Supervisor, free_port


@contextmanager
def servers(
    root: Path,
    *,
    admin_token: str = "bench",  # noqa: S107 - a throwaway platform's token
    mongo_data: Path | None = None,
) -> Iterator[tuple[Supervisor, Settings]]:
    """`mongo_data` None: SecantusDB in memory; a folder: on disk and durable, like `sluice up`."""
    supervisor = Supervisor(root / "logs")
    try:
        nats = supervisor.start(
            nats_spec(
                host="127.0.0.1",
                port=free_port(),
                monitor_port=free_port(),
                data_dir=root / "nats",
            )
        )
        mongo = supervisor.start(
            mongo_spec(host="127.0.0.1", port=free_port(), data_dir=mongo_data)
        )
        yield (
            supervisor,
            Settings(
                state_dir=root / "state",
                nats_url=nats.address,
                mongodb_uri=mongo.address,
                admin_token=admin_token,
                secret_key=Fernet.generate_key().decode(),
                log_level="warning",
            ),
        )
    finally:
        supervisor.stop_all()


def start_services(supervisor: Supervisor, settings: Settings, names: Sequence[str]) -> Settings:
    """Start `python -m sluice.<name>` for each name on a free port; the updated settings."""
    ports = settings.ports.model_copy(update={name: free_port() for name in names})
    settings = settings.model_copy(update={"ports": ports})
    env = {**os.environ, **service_env(settings)}
    for name in names:
        supervisor.start(
            python_service_spec(
                name=name,
                module=f"sluice.{name}",
                host="127.0.0.1",
                port=getattr(ports, name),
                env=env,
                python=sys.executable,
            )
        )
    return settings
