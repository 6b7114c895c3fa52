"""`sluice model|environment|data ...`: register, update, list, show, archive, restore,
download.

One Typer app per asset kind, built by `make_app`; outputs follow the shape
of `az ml model|environment|data show` (snake_case keys, `id`, `version` as
text, `creation_context`), plus Sluice's `archived` and `used_by`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import typer
import yaml

from sluice.common.artifacts import artifact_uri
from sluice.common.assets import AssetKind
from sluice.common.azure_ids import asset_container_id, asset_id
from sluice.sdk import generic_update
from sluice.sdk.asset_specs import load_asset
from sluice.sdk.cli.common import (
    AddOption,
    FileOption,
    RemoveOption,
    SetOption,
    generic_edits,
    optional_path,
    registry,
    save_download,
    warn,
)
from sluice.sdk.cli.errors import CliError
from sluice.sdk.cli.output import OutputFormat, OutputOption, err_console, render
from sluice.sdk.client import Asset, RegistryClient
from sluice.sdk.generic_update import GenericUpdateError

COLUMNS = ["name", "version", "type", "archived", "used_by", "description"]
CONTAINER_COLUMNS = ["name", "latest_version", "archived", "description"]
NameOption = typer.Option(..., "--name", "-n", help="asset name")
VersionOption = typer.Option(None, "--version", "-v", help="version (default: all / latest)")
DownloadPathOption = typer.Option(Path(), "--download-path", "-p", help="folder to download into")
LabelOption = typer.Option(None, "--label", "-l", help="label instead of a version: latest")
TagsOption = typer.Option(
    [], "--tags", help="space-separated key=value pairs (replace the YAML's tags)"
)
EDITABLE = frozenset({"description", "tags", "stage"})  # what `update` may change


def view(asset: Asset) -> dict[str, Any]:
    """Azure's field names and shape for `az ml <kind> show`."""
    doc, spec = asset.doc, asset.doc.spec
    out: dict[str, Any] = {
        "creation_context": {
            "created_at": doc.meta.created_at.isoformat(),
            "created_by": doc.meta.created_by,
            "last_modified_at": doc.meta.updated_at.isoformat(),
        },
        "description": spec.description,
        "id": asset_id(spec.asset_kind, spec.name, spec.version),
        "name": spec.name,
        "tags": dict(spec.tags),
        "version": spec.version,
        "archived": doc.archived,
        "used_by": list(asset.used_by),
    }
    if spec.asset_kind is AssetKind.environment:
        out["conda_file"] = yaml.safe_load(spec.conda_file) if spec.conda_file else None
        out["image"] = spec.image or None
        out["os_type"] = "linux"
        if spec.pip_requirements:
            out["pip_requirements"] = list(spec.pip_requirements)
    else:
        out["type"] = spec.type
        # REST's modelUri/dataUri form, which `create --path`, YAML `path:` and a
        # deployment's `model:` take back.
        out["path"] = artifact_uri(spec.artifact) if spec.artifact is not None else spec.path
        if spec.asset_kind is AssetKind.model:
            out["stage"] = "Archived" if doc.archived else (spec.stage or "Development")
            out["properties"] = {}
    if spec.stage and "stage" not in out:
        out["stage"] = spec.stage
    return out


def container_view(asset: Asset) -> dict[str, Any]:
    """`az ml <kind> list` without --name lists containers, one per name, with
    `latest_version` and no `version`; description and tags are its latest version's."""
    doc, spec = asset.doc, asset.doc.spec
    return {
        "creation_context": {
            "created_at": doc.meta.created_at.isoformat(),
            "created_by": doc.meta.created_by,
            "last_modified_at": doc.meta.updated_at.isoformat(),
        },
        "description": spec.description,
        "id": asset_container_id(spec.asset_kind, spec.name),
        "latest_version": spec.version,
        "name": spec.name,
        "tags": dict(spec.tags),
        "archived": doc.archived,
    }


def _show(asset: Asset, output: OutputFormat) -> None:
    row = view(asset)
    if output is OutputFormat.table:
        render(row, output, columns=[c for c in COLUMNS if c in row])
    else:
        render(row, output)


def make_app(kind: AssetKind) -> typer.Typer:
    noun = kind.value
    app = typer.Typer(help=f"Registered {kind.plural}: versioned, immutable once created.")

    is_env = kind is AssetKind.environment
    # az's short options differ by kind: `-d` is data's --description, environment's
    # --dockerfile-path (and model's --default-deployment-template, which Sluice lacks).
    description_option = typer.Option(
        None, "--description", *(["-d"] if kind is AssetKind.data else []), help="description"
    )
    dockerfile_option = typer.Option(
        None, "--dockerfile-path", *(["-d"] if is_env else []), hidden=not is_env,
        help="the Dockerfile in --build-context (default: Dockerfile)",
    )  # fmt: skip
    build_option = typer.Option(
        None, "--build-context", "-b", hidden=not is_env,
        help="a Docker build context folder (its pip/conda install lines are honoured)",
    )  # fmt: skip

    @app.command()
    def create(
        file: Path | None = FileOption,
        name: str | None = typer.Option(None, "--name", "-n", help=f"{noun} name"),
        version: str | None = typer.Option(None, "--version", "-v", help="version"),
        path: str | None = typer.Option(
            None, "--path", "-p", help="local file/folder (or a URI for data)"
        ),
        type_: str | None = typer.Option(None, "--type", "-t", help="asset type"),
        conda_file: str | None = typer.Option(
            None, "--conda-file", "-c", help="environment conda YAML", hidden=not is_env
        ),
        image: str | None = typer.Option(
            None, "--image", "-i", help="environment base image", hidden=not is_env
        ),
        build_context: Path | None = build_option,
        dockerfile_path: str | None = dockerfile_option,
        description: str | None = description_option,
        tags: list[str] = TagsOption,
        stage: str | None = typer.Option(
            None, "--stage", "-s", help="lifecycle stage, free text (e.g. Production)"
        ),
        set_: list[str] = SetOption,
        output: OutputFormat = OutputOption,
    ) -> None:
        """Register a new version from an Azure ML YAML file and/or options."""
        if file is None and not name:
            raise CliError("give --file or --name")
        fields = {
            "name": name,
            "version": version,
            "path": path,
            "type": type_,
            "conda_file": str(Path(conda_file).resolve()) if conda_file else None,
            "image": image,
            "description": description,
            "stage": stage,
        }
        sets = list(set_)
        if build_context is not None:
            sets.append(f"build.path={json.dumps(str(build_context.resolve()))}")
        if dockerfile_path:
            if build_context is None:
                raise CliError("--dockerfile-path names a file in --build-context: give both")
            sets.append(f"build.dockerfile_path={json.dumps(dockerfile_path)}")
        if tags:
            sets.append(f"tags={json.dumps(parse_tags(tags))}")
        with registry() as client:
            loaded = load_asset(kind, optional_path(file), client.upload, sets, fields=fields)
            warn(loaded.warnings)
            asset = client.create_asset(loaded.spec)
        err_console.print(f"Created {noun} {asset.doc.spec.name} version {asset.doc.spec.version}.")
        _show(asset, output)

    @app.command()
    def update(
        name: str = NameOption,
        version: str | None = VersionOption,
        label: str | None = LabelOption,
        set_: list[str] = SetOption,
        add: list[str] = AddOption,
        remove: list[str] = RemoveOption,
        description: str | None = typer.Option(None, "--description", help="description"),
        stage: str | None = typer.Option(None, "--stage", "-s", help="lifecycle stage"),
        output: OutputFormat = OutputOption,
    ) -> None:
        """Change a version's description, tags or stage, as az's generic update
        (`--set tags.stage=prod`, `--add tags team=ml`, `--remove tags.old`); the rest of a
        version is immutable (register a new version instead)."""
        edits = generic_edits(set_, add, remove)
        with registry() as client:
            asset = client.get_asset(kind, _reference(name, version, label))
            spec = asset.doc.spec
            before = view(asset)
            try:
                after = generic_update.apply(copy.deepcopy(before), edits)
            except GenericUpdateError as exc:
                raise CliError(str(exc)) from None
            if description is not None:
                after["description"] = description
            if stage is not None:
                after["stage"] = stage
            fixed = sorted(
                k for k in before.keys() | after.keys()
                if k not in EDITABLE and before.get(k) != after.get(k)
            )  # fmt: skip
            if fixed:
                raise CliError(
                    f"{noun} {spec.name} version {spec.version}: {', '.join(fixed)} cannot "
                    "change (a version is immutable but for its description, tags and stage); "
                    f"register a new version with `sluice {noun} create`"
                )
            new_tags = after.get("tags") or {}
            if not isinstance(new_tags, dict):
                raise CliError(f"tags must be a mapping of name to value, got {new_tags!r}")
            new_stage = after.get("stage")
            updated = client.update_asset(
                kind,
                spec.name,
                spec.version,
                description=str(after.get("description") or ""),
                tags={str(k): "" if v is None else str(v) for k, v in new_tags.items()},
                stage=spec.stage if new_stage == before.get("stage") else str(new_stage or ""),
                expected_version=asset.doc.meta.version,
            )
        err_console.print(f"Updated {noun} {spec.name} version {spec.version}.")
        _show(updated, output)

    @app.command("list")
    def list_(
        name: str | None = typer.Option(None, "--name", "-n", help="list the versions of one name"),
        include_archived: bool = typer.Option(False, "--include-archived"),
        archived_only: bool = typer.Option(False, "--archived-only"),
        stage: str | None = typer.Option(None, "--stage", "-s", help="only this stage"),
        max_results: int | None = typer.Option(
            None, "--max-results", "-r", min=1, help="at most this many"
        ),
        output: OutputFormat = OutputOption,
    ) -> None:
        """Every name with its latest version (Azure's containers), or every version of
        --name, newest first."""
        with registry() as client:
            assets = client.list_assets(
                kind, name or "", include_archived=include_archived or archived_only
            )
        shown = [a for a in assets if a.doc.archived or not archived_only]
        if stage:
            wanted = stage.lower()
            shown = [a for a in shown if str(view(a).get("stage", "")).lower() == wanted]
        shown = shown[:max_results]
        if name:
            columns = COLUMNS
            rows = [view(a) for a in shown]
        else:
            columns = CONTAINER_COLUMNS
            rows = [container_view(a) for a in shown]
        render(rows, output, columns=columns if output is OutputFormat.table else None)

    @app.command()
    def show(
        name: str = NameOption,
        version: str | None = VersionOption,
        label: str | None = LabelOption,
        output: OutputFormat = OutputOption,
    ) -> None:
        """One version (--version, or --label latest)."""
        with registry() as client:
            asset = client.get_asset(kind, _reference(name, version, label))
        _show(asset, output)

    @app.command()
    def archive(
        name: str = NameOption,
        version: str | None = VersionOption,
        label: str | None = LabelOption,
        output: OutputFormat = OutputOption,
    ) -> None:
        """Archive a version (or all versions): hidden from `list` and from @latest, as on
        Azure; deployments and jobs that use it keep it, and naming its version still works."""
        with registry() as client:
            version = _version(client, kind, name, version, label)
            asset = client.archive_asset(kind, name, version)
        err_console.print(f"Archived {noun} {name}" + (f" version {version}." if version else "."))
        _show(asset, output)

    @app.command()
    def restore(
        name: str = NameOption,
        version: str | None = VersionOption,
        label: str | None = LabelOption,
        output: OutputFormat = OutputOption,
    ) -> None:
        """Restore an archived version (or all versions)."""
        with registry() as client:
            version = _version(client, kind, name, version, label)
            asset = client.restore_asset(kind, name, version)
        err_console.print(f"Restored {noun} {name}" + (f" version {version}." if version else "."))
        _show(asset, output)

    if kind is not AssetKind.environment:

        @app.command()
        def download(
            name: str = NameOption,
            version: str | None = VersionOption,
            download_path: Path = DownloadPathOption,
        ) -> None:
            """Copy a version's files into --download-path/<name>/ (from the registry, wherever
            it runs)."""
            with registry() as client:
                asset = client.get_asset(kind, _reference(name, version, None))
                artifact = asset.doc.spec.artifact
                if artifact is None:
                    raise CliError(
                        f"{noun} {name!r} is a URI ({asset.doc.spec.path}); nothing to copy"
                    )
                target = download_path / name / artifact.name
                save_download(client.download(artifact.digest), target, f"{noun} {name}")
            err_console.print(f"Downloaded {noun} {name} to {target}.")

    return app


def _version(
    client: RegistryClient, kind: AssetKind, name: str, version: str | None, label: str | None
) -> str:
    """The version archive/restore act on: --version, the one --label names, or "" (all)."""
    if label:
        return client.get_asset(kind, _reference(name, version, label)).doc.spec.version
    return version or ""


def parse_tags(values: list[str]) -> dict[str, str]:
    """az's `--tags a=1 b=2` (space-separated key=value words; repeatable)."""
    tags: dict[str, str] = {}
    for word in " ".join(values).split():
        key, sep, value = word.partition("=")
        if not key:
            raise CliError(f"--tags {word!r}: use key=value, e.g. --tags team=ml stage=dev")
        tags[key] = value if sep else ""
    return tags


def _reference(name: str, version: str | None, label: str | None) -> str:
    if version and label:
        raise CliError("give --version or --label, not both")
    if version:
        return f"{name}:{version}"
    return f"{name}@{label or 'latest'}"
