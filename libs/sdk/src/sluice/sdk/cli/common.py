"""Pieces every resource command shares: options, the client, views, waiting."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.markup import escape

from sluice.common.assets import AssetKind, ReferenceError_, parse_reference
from sluice.common.platform import LocalPlatform
from sluice.common.resources import (
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    OnlineDeployment,
    OnlineDeploymentSpec,
    ProvisioningState,
)
from sluice.common.settings import Settings
from sluice.sdk.applied import AppliedWatcher
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import err_console
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.download import Download, save
from sluice.sdk.generic_update import Edit
from sluice.sdk.specs import Edits, Loaded

S = TypeVar("S")  # a deployment spec
D = TypeVar("D", OnlineDeployment, BatchDeploymentDoc)  # a stored deployment

FileOption = typer.Option(None, "--file", "-f", help="Azure ML CLI v2 YAML file")
SetOption = typer.Option(
    [], "--set", help="override a YAML field, e.g. --set instance_count=2 (repeatable)"
)
AddOption = typer.Option(
    [], "--add", help="append to a list (or key=value pairs to a mapping): --add tags team=ml"
)
RemoveOption = typer.Option(
    [], "--remove", help="delete a field or a list entry: --remove tags.team, --remove items 0"
)
NoWaitOption = typer.Option(False, "--no-wait", help="return at once instead of waiting")

# How long a wait on a platform it cannot see (remote) gives a deployment nobody has claimed.
PICKUP_TIMEOUT_S = 15.0
TERMINAL = {ProvisioningState.succeeded, ProvisioningState.failed, ProvisioningState.canceled}


@contextmanager
def registry() -> Iterator[RegistryClient]:
    with RegistryClient.connect() as client:
        yield client


def warn(messages: Sequence[str]) -> None:
    for message in messages:
        err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def archived_references(
    client: RegistryClient, spec: OnlineDeploymentSpec | BatchDeploymentSpec
) -> list[str]:
    """Warnings for the archived versions a deployment names by version: used, as on Azure,
    but hidden from lists and `@latest`, which a reader of the YAML may not expect."""
    found: list[str] = []
    named = (
        (AssetKind.model, spec.model.registered),
        (AssetKind.environment, spec.environment.registered),
    )
    for kind, reference in named:
        if not reference:
            continue
        try:
            ref = parse_reference(reference, kind)
            if not ref.version or ref.curated:
                continue
            asset = client.get_asset(kind, reference)
        except (ReferenceError_, SluiceError):
            continue  # the create call itself says what is wrong with it
        if asset.doc.archived:
            found.append(
                f"{kind.value} {ref.name} version {ref.version} is archived (hidden from lists "
                f"and from @latest); it is used all the same, as on Azure "
                f"(`sluice {kind.value} restore -n {ref.name} -v {ref.version}` to restore it)"
            )
    return found


def parse_shares(values: Sequence[str], option: str) -> dict[str, int]:
    """`["blue=90 green=10"]` or `["blue=90", "green=10"]` -> {"blue": 90, "green": 10}."""
    shares: dict[str, int] = {}
    for item in " ".join(values).replace(",", " ").split():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{option} {item!r}: use deployment=percent, e.g. {option} blue=90")
        if name in shares:
            raise CliError(
                f"{option} names {name!r} twice ({' '.join(values)!r}): give each deployment "
                "one share; nothing was changed"
            )
        try:
            shares[name] = int(value)
        except ValueError:
            raise CliError(
                f"{option} {item!r}: the share must be a whole number 0-100, got {value!r}"
            ) from None
    return shares


def _words(value: str) -> tuple[str, ...]:
    """One `--add`/`--remove` value: az.normalise's JSON list of words, or words split on spaces."""
    if value.startswith("["):
        try:
            words = json.loads(value)
        except ValueError:
            words = None
        if isinstance(words, list) and all(isinstance(w, str) for w in words):
            return tuple(words)
    return tuple(value.split())


def generic_edits(sets: Sequence[str], adds: Sequence[str], removes: Sequence[str]) -> list[Edit]:
    """az's generic update arguments as edits: every `--set`, then `--add`, then `--remove`."""
    return [
        *(Edit("set", (s,)) for s in sets),
        *(Edit("add", _words(a)) for a in adds),
        *(Edit("remove", _words(r)) for r in removes),
    ]


def service_running(settings: Settings, service: str) -> bool | None:
    """Whether the local platform runs `service`; None when it cannot be told (remote)."""
    state = LocalPlatform(settings).load_state()
    if state is None:
        return None if settings.registry_address else False
    return any(p.name == service for p in state.processes)


def _progress(what: str, doc: OnlineDeployment | BatchDeploymentDoc) -> str:
    """`<what>: Creating…`, with a one-line status message (a batch deployment's
    "building its environment")."""
    message = doc.meta.status_message
    detail = f" ({message})" if message and "\n" not in message else ""
    return f"{what}: {doc.meta.provisioning_state.value}{detail}…"


def report_settled(doc: OnlineDeployment | BatchDeploymentDoc, what: str, verb: str) -> None:
    """After a wait: a Failed deployment's reason as the CLI's error (exit 1), else its
    warnings and state."""
    if doc.meta.provisioning_state is ProvisioningState.failed:
        raise CliError(f"{what} failed: {doc.meta.status_message}")
    warn(doc.meta.warnings)
    err_console.print(f"{verb} {what}: {doc.meta.provisioning_state.value}.")


def wait_for_deployment(
    fetch: Callable[[], D],
    *,
    what: str,
    timeout_s: float = 900,
    pickup_timeout_s: float | None = None,
    unclaimed: Callable[[D], bool] = lambda doc: (
        doc.meta.provisioning_state is ProvisioningState.creating
    ),
    logs_hint: str = "`sluice online-deployment get-logs`",
) -> D:
    """Poll until the deployment reaches a terminal state, with a spinner.

    With `pickup_timeout_s`, give up early (returning the doc) if it stays `unclaimed`
    that long: no service is watching.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    doc = fetch()
    with err_console.status(_progress(what, doc)) as status:
        while doc.meta.provisioning_state not in TERMINAL:
            waited = time.monotonic() - started
            if pickup_timeout_s is not None and waited > pickup_timeout_s and unclaimed(doc):
                return doc
            if time.monotonic() > deadline:
                raise CliError(
                    f"{what} is still {doc.meta.provisioning_state.value} after {timeout_s:.0f}s; "
                    f"check {logs_hint}"
                )
            time.sleep(0.3)
            doc = fetch()
            status.update(_progress(what, doc))
    return doc


def save_download(download: Download, target: Path, what: str) -> None:
    """Write a started download at `target`, with a spinner counting what has come."""
    with err_console.status(f"Downloading {what}…") as status:

        def counted() -> Iterator[bytes]:
            received = 0
            for chunk in download.chunks:
                received += len(chunk)
                status.update(f"Downloading {what}… {received / (1 << 20):.1f} MiB")
                yield chunk

        try:
            save(dataclasses.replace(download, chunks=counted()), target)
        except OSError as exc:  # the target's folder, not the platform
            raise CliError(f"cannot write {target}: {exc}") from None


def optional_path(value: Path | None) -> Path | None:
    return value.expanduser() if value else None


def load_deployment(
    loader: Callable[..., Loaded[S]],
    client: RegistryClient,
    file: Path | None,
    edits: Edits,
    name: str | None,
    endpoint_name: str | None,
) -> Loaded[S]:
    """A deployment YAML as the platform takes it (`load_online_deployment` or
    `load_batch_deployment`): its folders uploaded, an inline named model registered."""
    return loader(
        optional_path(file),
        client.upload,
        edits,
        name=name,
        endpoint_name=endpoint_name,
        register=client.register_inline_model,
    )


def shares_text(shares: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(shares.items())) or "-"


@contextmanager
def applied_watcher(*, enabled: bool) -> Iterator[AppliedWatcher | None]:
    """A watcher for `traffic.applied` when the platform runs a traffic controller, else None."""
    settings = Settings()
    state = LocalPlatform(settings).load_state()
    has_gateway = state is not None and any(p.name == "traffic" for p in state.processes)
    if not enabled or state is None or not has_gateway:
        yield None
        return
    with AppliedWatcher(state.nats_url, settings.events_subject_prefix) as watcher:
        yield watcher
