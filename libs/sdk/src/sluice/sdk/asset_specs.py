"""Azure ML model / environment / data YAML (and their command-line forms) -> AssetSpec.

Paths resolve against the YAML's folder. A model's or data's local path is
uploaded as a content-addressed artifact (the same folder twice is stored
once). An environment's `build:` Docker context is honoured for what can be
honoured without Docker: its `FROM` image, `pip install` and `conda install`
lines and `conda env create/update -f` files; other instructions are reported,
and a context with no install line at all is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from sluice.common.artifacts import (
    ARTIFACT_URI_PREFIX,
    ArtifactError,
    parse_artifact_uri,
)
from sluice.common.assets import (
    INFERENCE_CONFIG,
    MAX_ENVIRONMENT_FILE,
    URI_RE,
    AssetKind,
    AssetSpec,
)
from sluice.common.conda import CondaSpecError, is_system_package, package_name, parse_match_spec
from sluice.common.resources import ArtifactRef
from sluice.sdk.specs import (
    AzureBuild,
    Loaded,
    SpecError,
    Uploader,
    _Azure,
    _prepare,
    _validate,
    resolve_path,
)


class _AzureAsset(_Azure):
    name: str
    version: str | int | None = None
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    stage: str = ""  # kept, as REST keeps properties.stage

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_as_text(cls, value: Any) -> Any:
        return {k: str(v) for k, v in value.items()} if isinstance(value, Mapping) else value

    def version_text(self) -> str:
        return "" if self.version is None else str(self.version)


class AzureModelAsset(_AzureAsset):
    path: str
    type: str = "custom_model"
    flavors: dict[str, Any] | None = None  # read from the model's MLmodel file instead
    job_name: str | None = None  # refused, as REST refuses jobName


class AzureEnvironmentAsset(_AzureAsset):
    image: str | None = None
    conda_file: str | None = None
    build: AzureBuild | None = None
    os_type: str = "linux"  # only linux, as REST's osType
    inference_config: dict[str, Any] | None = None  # refused, as REST's inferenceConfig


class AzureDataAsset(_AzureAsset):
    path: str
    type: str = "uri_folder"


def _run_commands(dockerfile: str) -> tuple[str, list[str], list[str]]:
    """FROM image, the shell commands of RUN lines, and the other instructions."""
    text = re.sub(r"\\\s*\n", " ", dockerfile)
    image, commands, others = "", list[str](), list[str]()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            image = rest.split()[0] if rest.split() else ""
        elif keyword.upper() == "RUN":
            commands.extend(c.strip() for c in re.split(r"&&|;", rest) if c.strip())
        elif keyword.upper() not in ("COPY", "ADD", "WORKDIR", "ENV", "ARG", "LABEL", "USER"):
            others.append(line)
    return image, commands, others


def _install_lines(
    context: Path, commands: Sequence[str], warnings: list[str]
) -> tuple[list[str], str]:
    """pip requirements and a conda file from the RUN commands of a build context."""
    pip: list[str] = []
    conda_file = ""
    for command in commands:
        words = shlex.split(command)
        if len(words) > 1 and words[0] in ("python", "python3") and words[1] == "-m":
            words = words[2:]
        if words[:2] == ["pip", "install"] or words[:2] == ["pip3", "install"]:
            args = iter(words[2:])
            for arg in args:
                if arg in ("-r", "--requirement"):
                    req_file = resolve_path(context, next(args, ""), "build: pip install -r")
                    pip.extend(
                        line.split("#", 1)[0].strip()
                        for line in req_file.read_text().splitlines()
                        if line.split("#", 1)[0].strip() and not line.strip().startswith("-")
                    )
                elif not arg.startswith("-"):
                    pip.append(arg)
        elif words[:2] in (["conda", "install"], ["mamba", "install"]):
            specs = [w for w in words[2:] if not w.startswith("-")]
            channels = {"-c", "--channel", "-n", "--name", "-p", "--prefix"}
            skip = {words[2:][i + 1] for i, w in enumerate(words[2:-1]) if w in channels}
            for spec in specs:
                if spec in skip or is_system_package(package_name(spec)):
                    continue
                try:
                    pip.append(parse_match_spec(spec).requirement())
                except CondaSpecError as exc:
                    raise SpecError(f"build: {command!r}: {exc}") from None
        elif words[:2] in (["conda", "env"],) and len(words) > 2 and "-f" in words:
            conda_file = _read_conda(
                resolve_path(context, words[words.index("-f") + 1], "build: conda env -f")
            )
        else:
            warnings.append(f"build: `RUN {command}` is not run by Sluice (no Docker build here)")
    return pip, conda_file


def from_build(base: Path, build: AzureBuild, warnings: list[str]) -> tuple[str, list[str], str]:
    """The FROM image, pip requirements and conda file of a build context; what Sluice does
    not honour goes to `warnings`. Also read for a deployment's inline `environment.build`."""
    context = resolve_path(base, build.path, "build.path")
    dockerfile = resolve_path(context, build.dockerfile_path, "build.dockerfile_path")
    image, commands, others = _run_commands(dockerfile.read_text())
    warnings.extend(f"build: `{line}` is ignored (no Docker build here)" for line in others)
    pip, conda_file = _install_lines(context, commands, warnings)
    if not pip and not conda_file:
        raise SpecError(
            f"build: {dockerfile} has no `pip install`, `conda install` or `conda env create -f` "
            "line Sluice can honour (it builds environments with uv, not Docker); "
            "use conda_file instead"
        )
    return image, pip, conda_file


def _artifact(base: Path, path: str, upload: Uploader) -> ArtifactRef:
    """A local file or folder, uploaded; or one uploaded before, named as `show` prints it
    (`azureml://artifacts/sha256:<hex>/<name>`, as REST's modelUri/dataUri)."""
    if path.startswith(ARTIFACT_URI_PREFIX):
        try:
            return parse_artifact_uri(path)
        except ArtifactError as exc:
            raise SpecError(f"path: {exc}") from None
    return upload(resolve_path(base, path, "path"))


def _read_conda(path: Path) -> str:
    """A conda file's text, refused before reading when over the registry's limit."""
    size = path.stat().st_size
    if size > MAX_ENVIRONMENT_FILE:
        raise SpecError(
            f"conda_file: {path} is {size} bytes; a conda file may hold at most "
            f"{MAX_ENVIRONMENT_FILE}"
        )
    return path.read_text()


def load_asset(
    kind: AssetKind,
    path: Path | None,
    upload: Uploader,
    sets: Sequence[str] = (),
    *,
    fields: Mapping[str, str | None],
) -> Loaded[AssetSpec]:
    """An asset from its YAML file and/or command-line fields (which win over the file)."""
    data, warnings, source = _prepare(path, sets, fields)
    base = path.parent if path else Path.cwd()
    if kind is AssetKind.model:
        model: AzureModelAsset = _validate(AzureModelAsset, data, source)
        if model.job_name:
            raise SpecError(
                f"{source}: job_name: Sluice keeps no job name (it runs no training jobs); "
                "leave it out"
            )
        if model.flavors is not None:
            warnings.append(
                f"{source}: flavors is read from the model's MLmodel file here; ignored"
            )
        spec = AssetSpec(
            asset_kind=kind,
            name=model.name,
            version=model.version_text(),
            description=model.description,
            tags=model.tags,
            stage=model.stage,
            type=model.type,
            artifact=_artifact(base, model.path, upload),
        )
    elif kind is AssetKind.environment:
        env: AzureEnvironmentAsset = _validate(AzureEnvironmentAsset, data, source)
        if env.os_type.lower() != "linux":
            raise SpecError(
                f"{source}: os_type {env.os_type!r}: only Linux is served (Sluice runs no "
                "Windows environments)"
            )
        if env.inference_config is not None:
            raise SpecError(f"{source}: {INFERENCE_CONFIG.format(field='inference_config')}")
        image, pip, conda = env.image or "", list[str](), ""
        if env.build is not None:
            image, pip, conda = from_build(base, env.build, warnings)
            image = env.image or image
        if env.conda_file:
            conda = _read_conda(resolve_path(base, env.conda_file, "conda_file"))
        spec = AssetSpec(
            asset_kind=kind,
            name=env.name,
            version=env.version_text(),
            description=env.description,
            tags=env.tags,
            stage=env.stage,
            conda_file=conda,
            image=image,
            pip_requirements=tuple(pip),
        )
    else:
        data_asset: AzureDataAsset = _validate(AzureDataAsset, data, source)
        given = data_asset.path
        uri = given if URI_RE.match(given) and not given.startswith(ARTIFACT_URI_PREFIX) else ""
        artifact = None if uri else _artifact(base, given, upload)
        spec = AssetSpec(
            asset_kind=kind,
            name=data_asset.name,
            version=data_asset.version_text(),
            description=data_asset.description,
            tags=data_asset.tags,
            stage=data_asset.stage,
            type=data_asset.type,
            artifact=artifact,
            path=uri,
        )
    return Loaded(spec, warnings)
