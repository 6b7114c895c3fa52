"""`sluice up`, `sluice status`, `sluice down`: the local platform."""

from __future__ import annotations

import time
from typing import Any

import typer

from sluice.common.platform import LocalPlatform, PlatformState
from sluice.common.settings import Settings
from sluice.common.supervisor import RunningProcess
from sluice.sdk.cli.output import OutputFormat, OutputOption, console, err_console, render


def _rows(state: PlatformState) -> list[dict[str, Any]]:
    return [
        {"component": p.name, "address": p.address, "pid": p.pid, "log": str(p.log_path)}
        for p in state.processes
    ]


def up(output: OutputFormat = OutputOption) -> None:
    """Start NATS, the embedded MongoDB-compatible server, the Sluice services and Envoy."""
    platform = LocalPlatform(Settings())
    started_at = time.monotonic()

    def started(proc: RunningProcess) -> None:
        err_console.print(f"  [green]✓[/] {proc.name:<12} {proc.address}")

    with err_console.status("Starting the Sluice platform…", spinner="dots"):
        state, already = platform.up(on_started=started)
    if already:
        err_console.print("The platform is already running.")
    else:
        err_console.print(
            f"Platform up in {time.monotonic() - started_at:.1f}s; state in {state.state_dir}"
        )
    render(_rows(state), output, title="Sluice platform")


def status(output: OutputFormat = OutputOption) -> None:
    """Show each component of the local platform and whether it is healthy."""
    platform = LocalPlatform(Settings())
    components = platform.status()
    if not components:
        err_console.print(
            f"No platform runs from {platform.state_dir} (start it with `sluice up`, "
            "or set SLUICE_STATE_DIR to the folder of a running one).",
            markup=False,
        )
        raise typer.Exit(code=3)
    err_console.print(f"Platform in {platform.state_dir}", markup=False)
    rows = [
        {
            "component": c.name,
            "address": c.address,
            "pid": c.pid,
            "state": "healthy" if c.healthy else ("unhealthy" if c.running else "stopped"),
            "log": str(c.log_path),
        }
        for c in components
    ]
    render(rows, output, title="Sluice platform")
    if not all(c.healthy for c in components):
        raise typer.Exit(code=1)


def down() -> None:
    """Stop every process `sluice up` started; data is kept in the state directory."""
    with err_console.status("Stopping the Sluice platform…", spinner="dots"):
        stopped = LocalPlatform(Settings()).down()
    if not stopped:
        console.print("Nothing was running.")
        return
    console.print("Stopped " + ", ".join(p.name for p in stopped) + ".")
