"""Registered assets <-> Azure's REST shape (workspace.proto's models, environments, data).

Azure's asset resources are ProxyResources, `{id, name, type, properties, systemData}`:
a version's `name` is the version, its properties carry Azure's names (`modelUri`,
`modelType`, `condaFile`, `image`, `dataUri`, `dataType`, `isArchived`, ...). Sluice keeps
no container document: a container (`/models/{name}`) is read from the name's versions.
Properties Sluice does not keep (`properties`, `jobName`, `isAnonymous`, a Docker
`build` context, an environment's `inferenceConfig`) are refused when set rather than
dropped, so a PUT never silently loses what it sent; `stage` is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.common.artifacts import ARTIFACT_URI_PREFIX, artifact_uri
from sluice.common.assets import (
    DATA_TYPES,
    INFERENCE_CONFIG,
    NOT_A_URI,
    URI_RE,
    AssetDoc,
    AssetKind,
    AssetSpec,
    newest_first,
)
from sluice.common.azure_ids import resource_id
from sluice.registry.arm import (
    PROVIDER,
    build_spec,
    parse_artifact,
)
from sluice.registry.arm import system_data as _system_data
from sluice.registry.domain import InvalidArgument
from sluice.v1 import workspace_pb2 as ws

SUCCEEDED = "Succeeded"
VIEWS = {"": "activeonly", "activeonly": "activeonly", "archivedonly": "archivedonly", "all": "all"}
VersionResource = ws.ModelVersionResource | ws.EnvironmentVersionResource | ws.DataVersionResource
VersionProperties = (
    ws.ModelVersionProperties | ws.EnvironmentVersionProperties | ws.DataVersionProperties
)


def list_view(value: str) -> str:
    """Azure's listViewType: which versions (or containers) a list shows."""
    view = VIEWS.get(value.lower())
    if view is None:
        raise InvalidArgument(
            f"listViewType {value!r} is not ActiveOnly, ArchivedOnly or All (default ActiveOnly)"
        )
    return view


def shown(archived: bool, view: str) -> bool:
    return view == "all" or archived == (view == "archivedonly")


def _type(kind: AssetKind, *, version: bool) -> str:
    return f"{PROVIDER}/{kind.plural}" + ("/versions" if version else "")


# ---- containers -----------------------------------------------------------------------------


def container(kind: AssetKind, versions: Sequence[AssetDoc]) -> ws.AssetContainerResource:
    """A name's container from its versions (oldest first, at least one)."""
    name = versions[0].spec.name
    live = [d for d in versions if not d.archived]
    latest = (live or list(versions))[-1]
    numbers = [int(d.spec.version) for d in versions if d.spec.version.isdigit()]
    data = _system_data(versions[0].meta)
    newest = max(versions, key=lambda d: d.meta.updated_at)
    data.last_modified_at.FromDatetime(newest.meta.updated_at)
    data.last_modified_by = newest.meta.created_by
    return ws.AssetContainerResource(
        id=resource_id(kind.plural, name),
        name=name,
        type=_type(kind, version=False),
        properties=ws.AssetContainerProperties(
            is_archived=not live,
            latest_version=latest.spec.version,
            next_version=str(max(numbers, default=0) + 1),
            provisioning_state=SUCCEEDED,
            data_type=latest.spec.type if kind is AssetKind.data else "",
        ),
        system_data=data,
    )


# ---- versions out ---------------------------------------------------------------------------


def version(doc: AssetDoc, used_by: Sequence[str]) -> VersionResource:
    spec = doc.spec
    kind = spec.asset_kind
    common: dict[str, Any] = {
        "description": spec.description,
        "tags": spec.tags,
        "is_archived": doc.archived,
        "used_by": used_by,
        "stage": spec.stage,
    }
    envelope: dict[str, Any] = {
        "id": resource_id(kind.plural, spec.name, "versions", spec.version),
        "name": spec.version,
        "type": _type(kind, version=True),
        "system_data": _system_data(doc.meta),
    }
    if kind is AssetKind.model:
        return ws.ModelVersionResource(
            **envelope,
            properties=ws.ModelVersionProperties(
                **common,
                model_type=spec.type,
                model_uri=artifact_uri(spec.artifact) if spec.artifact else "",
                provisioning_state=SUCCEEDED,
            ),
        )
    if kind is AssetKind.environment:
        return ws.EnvironmentVersionResource(
            **envelope,
            properties=ws.EnvironmentVersionProperties(
                **common,
                image=spec.image,
                conda_file=spec.conda_file,
                environment_type="UserCreated",
                os_type="Linux",
                auto_rebuild="Disabled",
                provisioning_state=SUCCEEDED,
                pip_requirements=spec.pip_requirements,
            ),
        )
    return ws.DataVersionResource(
        **envelope,
        properties=ws.DataVersionProperties(
            **common,
            data_type=spec.type,
            data_uri=artifact_uri(spec.artifact) if spec.artifact else spec.path,
        ),
    )


def sort_versions(docs: Sequence[AssetDoc]) -> list[AssetDoc]:
    """A version list's order: newest first, as Azure's (`[0]` is the latest version)."""
    return newest_first(docs)


# ---- versions in ----------------------------------------------------------------------------


def _refuse_unkept(props: VersionProperties) -> None:
    if props.properties:
        raise InvalidArgument(
            "properties.properties: Sluice keeps no asset property dictionary; use tags"
        )
    if props.is_anonymous:
        raise InvalidArgument("properties.isAnonymous: Sluice registers named versions only")
    if getattr(props, "job_name", ""):
        raise InvalidArgument(
            "properties.jobName: Sluice keeps no jobName (it runs no training jobs); leave it out"
        )
    if isinstance(props, ws.EnvironmentVersionProperties) and props.HasField("inference_config"):
        raise InvalidArgument(INFERENCE_CONFIG.format(field="properties.inferenceConfig"))


def version_spec(kind: AssetKind, name: str, version_: str, resource: VersionResource) -> AssetSpec:
    """The AssetSpec a PUT of `resource` to /{kind}s/{name}/versions/{version_} describes."""
    if resource.name and resource.name != version_:
        raise InvalidArgument(
            f"the body names version {resource.name!r} but the path {version_!r}; they must match"
        )
    if not version_:
        raise InvalidArgument("the path must name the version (…/versions/{version})")
    props = resource.properties
    _refuse_unkept(props)
    data: dict[str, Any] = {
        "asset_kind": kind,
        "name": name,
        "version": version_,
        "description": props.description,
        "tags": dict(props.tags),
        "stage": props.stage,
    }
    if isinstance(props, ws.ModelVersionProperties):
        if not props.model_uri:
            raise InvalidArgument(
                f"properties.modelUri is required: the uploaded model file or folder "
                f"({ARTIFACT_URI_PREFIX}sha256:<hex>/<name>)"
            )
        data["artifact"] = parse_artifact(props.model_uri, "properties.modelUri")
        data["type"] = props.model_type or "custom_model"
    elif isinstance(props, ws.EnvironmentVersionProperties):
        if props.build.context_uri or props.build.dockerfile_path:
            raise InvalidArgument(
                "properties.build: Sluice builds no Docker context over REST; send condaFile, "
                "image or pipRequirements (the CLI reads a build context's requirements)"
            )
        if props.os_type and props.os_type.lower() != "linux":
            raise InvalidArgument(f"properties.osType {props.os_type!r}: only Linux is served")
        data.update(
            image=props.image,
            conda_file=props.conda_file,
            pip_requirements=tuple(props.pip_requirements),
        )
    else:
        if props.data_type not in DATA_TYPES:
            raise InvalidArgument(
                f"properties.dataType must be one of {', '.join(DATA_TYPES)}, "
                f"got {props.data_type!r}"
            )
        if not props.data_uri:
            raise InvalidArgument(
                "properties.dataUri is required (an uploaded file or folder, or a URI)"
            )
        data["type"] = props.data_type
        if props.data_uri.startswith(ARTIFACT_URI_PREFIX):
            data["artifact"] = parse_artifact(props.data_uri, "properties.dataUri")
        elif URI_RE.match(props.data_uri):
            data["path"] = props.data_uri
        else:
            raise InvalidArgument(f"properties.dataUri {props.data_uri[:200]!r} {NOT_A_URI}")
    return build_spec(AssetSpec, data, f"{kind.value} {name!r}")


def immutable_change(current: AssetSpec, wanted: AssetSpec) -> str:
    """The first property a PUT would change that a version cannot ("" if none)."""
    fields = {
        AssetKind.model: (("artifact", "modelUri"), ("type", "modelType")),
        AssetKind.environment: (
            ("image", "image"),
            ("conda_file", "condaFile"),
            ("pip_requirements", "pipRequirements"),
        ),
        AssetKind.data: (("artifact", "dataUri"), ("path", "dataUri"), ("type", "dataType")),
    }[current.asset_kind]
    for field, name in fields:
        if getattr(current, field) != getattr(wanted, field):
            return f"properties.{name}"
    return ""
