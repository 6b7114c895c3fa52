"""Registered assets (models, environments, data) and Azure's ways of naming them.

An asset version is immutable once created: only its description, tags, stage
and `archived` change. It is stored as one document per version, `_id` =
`<kind>/<name>/<version>`.

References, as Azure ML CLI v2 writes them (`parse_reference`):

    azureml:my-model:1                    a version
    azureml:my-model@latest               a label (Sluice knows `latest`)
    azureml://registries/<r>/models/my-model/versions/1 | /labels/latest
    azureml:/subscriptions/.../models/my-model/versions/1   (an asset's `id`)
    my-model:1                            (the YAML `name`/`version` form, joined)

`azureml://registries/azureml/environments/...` names Azure's curated
environments (`sluice.common.curated`); any other registry name means this
platform's own registry (Sluice has one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from sluice.common.resources import ArtifactRef, Meta

ASSETS = "assets"
CURATED_REGISTRY = "azureml"
LABELS = ("latest",)
MODEL_TYPES = ("custom_model", "mlflow_model", "triton_model")
DATA_TYPES = ("uri_file", "uri_folder")
# Sizes of an asset version's own text, so that one version stays far below gRPC's 4 MiB
# message (a listing is paged by bytes too): the registry refuses more (INVALID_ARGUMENT
# naming the field) and the CLI refuses a larger conda file before reading it.
MAX_ENVIRONMENT_FILE = 64 * 1024  # a conda file, or the pip requirement lines together
MAX_PIP_REQUIREMENTS = 1000  # lines
MAX_IMAGE = 1024  # an image reference
MAX_PATH = 2048  # a data URI (what browsers and most servers take)
MAX_STAGE = 256  # a stage (as a tag's value)
# A data version's path that is not uploaded: a URI, `scheme://` and more, no blanks (the
# CLI's test for "a URI, not a local path"; the registry and REST refuse anything else).
URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.IGNORECASE)
NOT_A_URI = (
    "is not a URI (https://..., file:///..., azureml://datastores/<datastore>/paths/...); "
    "a local file or folder is uploaded first (the CLI uploads `path:`)"
)
# An environment's inference_config (REST: properties.inferenceConfig), refused by the CLI
# and REST alike: `field` names it as each spells it.
INFERENCE_CONFIG = (
    "{field}: a custom container's routes are not honoured (Sluice serves every environment "
    "with its own inference server: /score, /liveness, /readiness); leave it out"
)


class AssetKind(StrEnum):
    model = "model"
    environment = "environment"
    data = "data"

    @property
    def plural(self) -> str:
        """The path segment Azure uses (`models`, `environments`, `data`)."""
        return "data" if self is AssetKind.data else f"{self.value}s"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AssetSpec(_Model):
    """What the user registers; which fields apply depends on `kind`."""

    asset_kind: AssetKind  # not `kind`: that is the compute kind everywhere else
    name: str
    version: str = ""  # "" = the next integer version
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    type: str = ""  # model: custom_model|mlflow_model|triton_model; data: uri_file|uri_folder
    artifact: ArtifactRef | None = None  # uploaded model files or data
    path: str = ""  # data: a URI that is not uploaded (https://..., file:///...)
    conda_file: str = ""  # environment: the conda YAML's content
    image: str = ""
    pip_requirements: tuple[str, ...] = ()  # environment: from a build context's pip lines
    stage: str = ""  # Azure's lifecycle stage, free text ("Production"); may change, as tags


class AssetDoc(_Model):
    spec: AssetSpec
    meta: Meta = Field(default_factory=Meta)
    archived: bool = False


def asset_id(kind: AssetKind, name: str, version: str) -> str:
    return f"{kind.value}/{name}/{version}"


def version_key(version: str) -> tuple[int, int | str]:
    """Sort versions numerically where they are numbers (2 < 10), else as text, numbers first."""
    return (0, int(version)) if version.isdigit() else (1, version)


def creation_key(doc: AssetDoc) -> tuple[datetime, tuple[int, int | str]]:
    """Order of creation (Azure's `createdAt`), the version breaking a tie of the clock."""
    return doc.meta.created_at, version_key(doc.spec.version)


def newest_first(docs: Iterable[AssetDoc]) -> list[AssetDoc]:
    """Versions as Azure lists them and as `latest` reads them: the most recently created
    first (so `az ml model list -n m --query "[0].version"` is the latest version)."""
    return sorted(docs, key=creation_key, reverse=True)


class ReferenceError_(ValueError):  # noqa: N801 - avoid shadowing the builtin ReferenceError
    """A reference that does not name an asset; the message shows the accepted forms."""


@dataclass(frozen=True)
class AssetRef:
    kind: AssetKind
    name: str
    version: str = ""
    label: str = ""
    registry: str = ""  # "" = this platform; "azureml" = Azure's curated assets

    @property
    def curated(self) -> bool:
        return self.registry == CURATED_REGISTRY

    def __str__(self) -> str:
        where = f"azureml://registries/{self.registry}/" if self.registry else "azureml:"
        if self.registry:
            tail = f"versions/{self.version}" if self.version else f"labels/{self.label}"
            return f"{where}{self.kind.plural}/{self.name}/{tail}"
        return (
            f"{where}{self.name}:{self.version}"
            if self.version
            else f"{where}{self.name}@{self.label}"
        )


NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
REGISTRY_RE = re.compile(
    rf"^azureml://registries/(?P<registry>{NAME})/(?P<plural>models|environments|data)/"
    rf"(?P<name>{NAME})(?:/(?:versions/(?P<version>[^/]+)|labels/(?P<label>[^/]+)))?/?$"
)
ARM_RE = re.compile(
    rf"/(?P<plural>models|environments|data)/(?P<name>{NAME})/versions/(?P<version>[^/]+)$"
)
SHORT_RE = re.compile(rf"^(?P<name>{NAME})(?::(?P<version>[^:@/]+)|@(?P<label>[^:@/]+))?$")


def _forms(kind: AssetKind) -> str:
    return (
        f"azureml:<name>:<version>, azureml:<name>@latest or "
        f"azureml://registries/<registry>/{kind.plural}/<name>/versions/<version>"
    )


def parse_reference(text: str, kind: AssetKind) -> AssetRef:
    """A reference to an asset of `kind` in any of Azure's spellings (see the module doc)."""
    raw = text.strip()
    if raw.startswith("azureml://"):
        match = REGISTRY_RE.match(raw)
        if match is None:
            raise ReferenceError_(
                f"{kind.value} reference {text!r} is malformed; use {_forms(kind)}"
            )
        if match["plural"] != kind.plural:
            raise ReferenceError_(
                f"{text!r} names {match['plural']}, but a {kind.value} reference is needed"
            )
        ref = AssetRef(
            kind,
            match["name"],
            match["version"] or "",
            match["label"] or ("" if match["version"] else "latest"),
            match["registry"],
        )
    elif raw.startswith(("azureml:/", "/subscriptions/")):
        match = ARM_RE.search(raw)
        if match is None or match["plural"] != kind.plural:
            raise ReferenceError_(
                f"{kind.value} reference {text!r} is malformed; use {_forms(kind)}"
            )
        ref = AssetRef(kind, match["name"], match["version"])
    else:
        match = SHORT_RE.match(raw.removeprefix("azureml:"))
        if match is None or not (match["version"] or match["label"]):
            raise ReferenceError_(
                f"{kind.value} reference {text!r} is malformed (a version or label is needed); "
                f"use {_forms(kind)}"
            )
        ref = AssetRef(kind, match["name"], match["version"] or "", match["label"] or "")
    if ref.label and ref.label not in LABELS:
        raise ReferenceError_(
            f"{kind.value} reference {text!r}: unknown label {ref.label!r}; Sluice knows "
            f"{', '.join('@' + label for label in LABELS)}"
        )
    return ref
