"""`sluice up`, `sluice status`, `sluice down`, `sluice events-url`: the local platform."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from sluice.common.nats_auth import AUDIT_INBOX, AUDIT_USER, FOLDER, PASSWORDS, with_user
from sluice.common.platform import (
    ComponentStatus,
    LocalPlatform,
    PlatformState,
    supervisor_running,
)
from sluice.common.settings import Settings
from sluice.common.supervise import Watchdog
from sluice.common.supervisor import RunningProcess
from sluice.sdk.cli.output import OutputFormat, OutputOption, console, err_console, render


def _rows(state: PlatformState) -> list[dict[str, Any]]:
    return [
        {"component": p.name, "address": p.address, "pid": p.pid, "log": str(p.log_path)}
        for p in state.processes
    ]


def up(
    output: OutputFormat = OutputOption,
    foreground: bool = typer.Option(
        False,
        "--foreground",
        help="supervise in this process until SIGTERM instead of leaving a watchdog (systemd)",
    ),
) -> None:
    """Start NATS, the embedded MongoDB-compatible server, the Sluice services and Envoy.

    Only what is not running is started; a watchdog then restarts whatever dies.
    """
    from sluice.common.environments import platform_unreachable  # only `up` needs it

    platform = LocalPlatform(Settings())
    if problem := platform_unreachable():
        err_console.print(f"Warning: {problem}.", style="yellow", markup=False, soft_wrap=True)
    started_at = time.monotonic()

    def on_started(proc: RunningProcess) -> None:
        err_console.print(f"  [green]✓[/] {proc.name:<12} {proc.address}")

    with err_console.status("Starting the Sluice platform…", spinner="dots"):
        state, started = platform.up(on_started=on_started, watchdog=not foreground)
    if not started:
        err_console.print("The platform is already running.")
    elif len(started) < len(state.processes):
        err_console.print(f"Started what was missing: {', '.join(started)}.")
    else:
        err_console.print(
            f"Platform up in {time.monotonic() - started_at:.1f}s; state in {state.state_dir}"
        )
    render(_rows(state), output, title="Sluice platform")
    if state.management_url:
        err_console.print(
            f"Portal: {state.management_url}/portal/ (sign in with the admin token, "
            f"{platform.state_dir / 'admin-token'}); REST API: {state.management_url} "
            f"(OpenAPI: {state.management_url}/openapi.json)",
            markup=False,
            soft_wrap=True,
        )
    if foreground:
        raise typer.Exit(code=Watchdog(platform).run())


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
    known = platform.load_state()
    if known is not None and known.management_url:
        err_console.print(
            f"Portal: {known.management_url}/portal/ · REST API: {known.management_url}",
            markup=False,
        )
    rows = [
        {
            "component": c.name,
            "address": c.address,
            "pid": c.pid,
            "state": _state_word(c),
            "restarts": c.restarts,
            "log": str(c.log_path),
        }
        for c in components
    ]
    render(rows, output, title="Sluice platform")
    problems = [
        f"{c.name} is {_state_word(c)}"
        + (f" ({c.last_error})" if c.last_error and not c.healthy else "")
        + f"; its log: {c.log_path}"
        for c in components
        if not c.healthy
    ]
    state = platform.load_state()
    supervised = state is not None and supervisor_running(state)
    if not supervised:
        problems.append("the supervisor is not running, so nothing restarts what dies")
    if problems:
        for problem in problems:
            err_console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
        hint = (
            "The supervisor restarts it with back-off; a crash loop needs its log read first."
            if supervised
            else "Run `sluice up`: it starts only what is missing and the supervisor."
        )
        err_console.print(hint, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _state_word(c: ComponentStatus) -> str:
    if c.crash_loop and not c.healthy:
        return "crash-looping"
    return "healthy" if c.healthy else ("unhealthy" if c.running else "down")


def down() -> None:
    """Stop every process `sluice up` started; data is kept in the state directory."""
    with err_console.status("Stopping the Sluice platform…", spinner="dots"):
        stopped = LocalPlatform(Settings()).down()
    if not stopped:
        console.print("Nothing was running.")
        return
    console.print("Stopped " + ", ".join(p.name for p in stopped) + ".")


def events_url() -> None:
    """Print the NATS URL of the read-only `audit` user, for audit and alerting subscribers.

    It reads events (core subscriptions, JetStream consumers of the events stream: ordered
    ones and one durable named `audit`) and writes nothing; clients set the inbox prefix
    `_INBOX_audit` (docs/security.md). Only the platform's user can read its password.
    """
    platform = LocalPlatform(Settings())
    state = platform.load_state()
    nats = next((p for p in state.processes if p.name == "nats"), None) if state else None
    if nats is None or not nats.address:
        err_console.print(
            f"No NATS of the platform in {platform.state_dir}: start it with `sluice up` (a NATS "
            "named by SLUICE_NATS_URL has the operator's own users).",
            markup=False,
        )
        raise typer.Exit(code=3)
    try:
        passwords = json.loads((platform.state_dir / FOLDER / PASSWORDS).read_text())
    except PermissionError:
        err_console.print(
            f"Only the platform's user can read the NATS passwords in {platform.state_dir}; "
            "run this as that user (e.g. with sudo).",
            markup=False,
        )
        raise typer.Exit(code=1) from None
    console.print(with_user(nats.address, AUDIT_USER, passwords[AUDIT_USER]), markup=False)
    err_console.print(
        f"Read-only: subscribe to events with the inbox prefix {AUDIT_INBOX}, e.g. "
        f"nats --server <url> --inbox-prefix {AUDIT_INBOX} sub 'sluice.events.>'",
        markup=False,
    )
