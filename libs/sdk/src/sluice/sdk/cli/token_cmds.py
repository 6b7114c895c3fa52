"""`sluice token create|list|revoke`: per-user tokens of the management API, with roles.

reader (Get/List, no endpoint keys or logs), deployer (every call), admin (also tokens),
checked by the registry, batch, metrics and provisioner services alike. A token may
expire (`--expires-in 7d`). Users send theirs as SLUICE_TOKEN; events record the
token's user as their actor.
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import typer

from sluice.sdk.cli.common import registry
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render

app = typer.Typer(
    help="Per-user tokens of the management API (roles: reader, deployer, admin).",
    no_args_is_help=True,
)
ROLES = {1: "reader", 2: "deployer", 3: "admin"}
COLUMNS = [
    "id",
    "user",
    "role",
    "created_at",
    "created_by",
    "expires_at",
    "revoked_at",
    "description",
]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"^([1-9][0-9]*)([smhd])$")


def seconds(text: str) -> int:
    """`90s`, `30m`, `12h`, `7d` -> seconds."""
    found = DURATION_RE.match(text.strip())
    if not found:
        raise typer.BadParameter(
            f"{text!r} is not a duration: a whole number and a unit, s, m, h or d (e.g. 7d)"
        )
    return int(found.group(1)) * UNITS[found.group(2)]


def view(token: Any) -> dict[str, Any]:
    def stamp(field: str) -> str | None:
        if not token.HasField(field):
            return None
        return str(getattr(token, field).ToDatetime(UTC).isoformat(timespec="seconds"))

    return {
        "id": token.id,
        "user": token.user,
        "role": ROLES.get(token.role, "?"),
        "description": token.description,
        "created_at": stamp("created_at"),
        "created_by": token.created_by,
        "expires_at": stamp("expires_at"),
        "revoked_at": stamp("revoked_at"),
    }


@app.command("create")
def create(
    user: str = typer.Option(..., "--user", "-u", help="who the token is for (the events' actor)"),
    role: str = typer.Option(..., "--role", "-r", help="reader, deployer or admin"),
    description: str = typer.Option("", "--description", "-d"),
    expires_in: str | None = typer.Option(
        None, "--expires-in", help="refused after this long: 90s, 30m, 12h, 7d (default never)"
    ),
    output: OutputFormat = OutputOption,
) -> None:
    """A new token; the secret is printed once (the registry keeps only its hash)."""
    lifetime = seconds(expires_in) if expires_in is not None else 0
    with registry() as client:
        created = client.create_token(user, role, description, lifetime)
    render(
        {**view(created.token), "token": created.secret},
        output,
        columns=["id", "user", "role", "expires_at", "token"],
    )
    err_console.print("Keep the token now: it cannot be shown again. Use it as SLUICE_TOKEN.")


@app.command("list")
def list_cmd(
    include_revoked: bool = typer.Option(False, "--all", help="also revoked tokens"),
    output: OutputFormat = OutputOption,
) -> None:
    """Tokens (never their secrets)."""
    with registry() as client:
        tokens = client.list_tokens(include_revoked)
    render([view(t) for t in tokens], output, columns=COLUMNS, title="Tokens")


@app.command("revoke")
def revoke(
    token_id: str = typer.Argument(..., help="the token's id"), output: OutputFormat = OutputOption
) -> None:
    """Refuse the token from now on."""
    with registry() as client:
        render(view(client.revoke_token(token_id)), output, columns=COLUMNS)
