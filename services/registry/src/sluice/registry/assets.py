"""Registered models, environments and data: create, read, archive, and resolve references.

Same rules as the rest of the registry: every check runs before anything is
written, each change publishes one event, and archive/restore are conditional
on the version they read. Archiving hides a version from lists and `@latest`
only, as on Azure: what uses it keeps it, and naming its version still works.
Deployments name assets by reference; `resolve_*` turns a reference into what
the provisioner runs (the model version's artifact, the environment version's
conda file) when the deployment is created, so a bad reference stores nothing.

Lineage is read, not kept: the deployments that use a version are the ones
whose stored spec names it (`ModelRef.asset`, `EnvironmentSpec.registered`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sluice.common.artifacts import ArtifactStore
from sluice.common.assets import (
    DATA_TYPES,
    MAX_ENVIRONMENT_FILE,
    MAX_IMAGE,
    MAX_PATH,
    MAX_PIP_REQUIREMENTS,
    MAX_STAGE,
    MODEL_TYPES,
    NOT_A_URI,
    URI_RE,
    AssetDoc,
    AssetKind,
    AssetRef,
    AssetSpec,
    ReferenceError_,
    asset_id,
    creation_key,
    newest_first,
    parse_reference,
    version_key,
)
from sluice.common.conda import CondaSpecError, parse_conda_file
from sluice.common.curated import CuratedCatalogue, UnknownCuratedEnvironment
from sluice.common.events import catalogue as ev
from sluice.common.log import get_logger
from sluice.common.resources import (
    BatchDeploymentSpec,
    EnvironmentSpec,
    Meta,
    ModelRef,
    OnlineDeploymentSpec,
    ProvisioningState,
    utcnow,
)
from sluice.registry.domain import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    check_length,
    check_text,
)
from sluice.registry.store import RegistryStore, Writes

log = get_logger(__name__)
D = TypeVar("D", OnlineDeploymentSpec, BatchDeploymentSpec)
ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")
ASSET_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,49}$")
RETRIES = 5


# `used_by` names this many of the batch jobs that read a version, the latest.
USED_BY_JOBS = 20


def check_asset(spec: AssetSpec, curated: CuratedCatalogue) -> None:
    """The rules of a new asset version; raises InvalidArgument saying what to fix."""
    what = spec.asset_kind.value
    if not ASSET_NAME_RE.match(spec.name):
        raise InvalidArgument(
            f"{what} name {spec.name!r} is invalid: use letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (at most 255 characters)"
        )
    if spec.version and not ASSET_VERSION_RE.match(spec.version):
        raise InvalidArgument(
            f"{what} version {spec.version!r} is invalid: use letters, digits, '-', '_' or '.'"
        )
    check_text(what, spec.name, spec.description, spec.tags)
    check_length(f"{what} {spec.name!r}: image", spec.image, MAX_IMAGE)
    check_length(f"{what} {spec.name!r}: path", spec.path, MAX_PATH)
    check_length(f"{what} {spec.name!r}: stage", spec.stage, MAX_STAGE)
    check_environment_files(f"{what} {spec.name!r}", spec.conda_file, spec.pip_requirements)
    if spec.asset_kind is AssetKind.model:
        if spec.artifact is None:
            raise InvalidArgument(f"model {spec.name!r} needs `path` (its file or folder)")
        if spec.type not in MODEL_TYPES:
            raise InvalidArgument(
                f"model type must be one of {', '.join(MODEL_TYPES)}, got {spec.type!r}"
            )
    elif spec.asset_kind is AssetKind.environment:
        if curated.is_curated_name(spec.name):
            raise InvalidArgument(
                f"environment name {spec.name!r}: names starting with 'AzureML' are reserved "
                "for curated environments"
            )
        if not (spec.conda_file or spec.image or spec.pip_requirements):
            raise InvalidArgument(
                f"environment {spec.name!r} needs `conda_file`, `image` or a `build` context"
            )
        if spec.conda_file:
            try:
                parse_conda_file(spec.conda_file)
            except CondaSpecError as exc:
                raise InvalidArgument(f"environment {spec.name!r}: {exc}") from None
    else:
        if spec.type not in DATA_TYPES:
            raise InvalidArgument(
                f"data type must be one of {', '.join(DATA_TYPES)}, got {spec.type!r}"
            )
        if (spec.artifact is None) == (not spec.path):
            raise InvalidArgument(f"data {spec.name!r} needs `path` (a local path or a URI)")
        if spec.path and not URI_RE.match(spec.path):
            raise InvalidArgument(f"data {spec.name!r}: path {spec.path[:200]!r} {NOT_A_URI}")
        if spec.artifact is not None and spec.artifact.is_directory != (spec.type == "uri_folder"):
            kind = "folder" if spec.artifact.is_directory else "file"
            raise InvalidArgument(
                f"data {spec.name!r} is {spec.type} but its path is a {kind}; "
                f"use type: {'uri_folder' if spec.artifact.is_directory else 'uri_file'}"
            )


def check_environment_files(label: str, conda_file: str, pip: tuple[str, ...]) -> None:
    """An environment's conda file and pip lines are bounded (MAX_ENVIRONMENT_FILE each)."""
    check_length(f"{label}: conda_file", conda_file, MAX_ENVIRONMENT_FILE)
    if len(pip) > MAX_PIP_REQUIREMENTS:
        raise InvalidArgument(
            f"{label}: pip_requirements: {len(pip)} lines given, at most "
            f"{MAX_PIP_REQUIREMENTS} are allowed"
        )
    check_length(f"{label}: pip_requirements (together)", "\n".join(pip), MAX_ENVIRONMENT_FILE)


def page_token(doc: AssetDoc, *, by_name: bool) -> str:
    """Where a listing resumes: after this name, or after this version (newest first). A
    position, not an index, so versions created between pages do not shift the next one."""
    if by_name:
        return json.dumps(["name", doc.spec.name])
    return json.dumps(["created", doc.meta.created_at.isoformat(), doc.spec.version])


def _follows(token: str, *, by_name: bool) -> Callable[[AssetDoc], bool]:
    try:
        what, *where = json.loads(token)
        if by_name and what == "name":
            (name,) = where
            return lambda d: bool(d.spec.name > name)
        if not by_name and what == "created":
            at, version = where
            key = (datetime.fromisoformat(at), version_key(version))
            return lambda d: creation_key(d) < key
    except (ValueError, TypeError):
        pass
    raise InvalidArgument(
        f"page_token {token[:80]!r} was not given by this listing; list again from the start"
    )


class AssetService:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        curated: CuratedCatalogue,
    ):
        self._store = store
        self._artifacts = artifacts
        self._curated = curated

    # ---- create / read ------------------------------------------------------------------

    async def create(self, spec: AssetSpec, actor: str) -> AssetDoc:
        check_asset(spec, self._curated)
        if spec.artifact is not None and not self._artifacts.exists(spec.artifact):
            raise InvalidArgument(
                f"artifact {spec.artifact.name!r} ({spec.artifact.digest}) was not uploaded; "
                "upload it with UploadArtifact first (the CLI does this for you)"
            )
        if spec.asset_kind is AssetKind.model and spec.type == "mlflow_model":
            assert spec.artifact is not None  # checked above
            if not (self._artifacts.path_of(spec.artifact) / "MLmodel").is_file():
                raise InvalidArgument(
                    f"model {spec.name!r} is an mlflow_model but its folder has no MLmodel file"
                )
        if not spec.version:
            spec = spec.model_copy(update={"version": await self._next_version(spec)})
        doc = AssetDoc(
            spec=spec, meta=Meta(created_by=actor, provisioning_state=ProvisioningState.succeeded)
        )
        try:
            async with self._store.transaction() as tx:
                await tx.assets.insert(asset_id(spec.asset_kind, spec.name, spec.version), doc)
                self._emit(tx, doc, "created", actor)
        except AlreadyExists:
            raise AlreadyExists(
                f"{spec.asset_kind.value} {spec.name!r} version {spec.version!r} already exists; "
                "versions are immutable: give a new --version (or none for the next number)"
            ) from None
        log.info("asset_created", kind=spec.asset_kind.value, name=spec.name, version=spec.version)
        return doc

    async def _next_version(self, spec: AssetSpec) -> str:
        versions = [d.spec.version for d in await self._versions(spec.asset_kind, spec.name)]
        numbers = [int(v) for v in versions if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    async def _versions(self, kind: AssetKind, name: str) -> list[AssetDoc]:
        return await self._store.assets.find({"spec.asset_kind": kind.value, "spec.name": name})

    async def get(self, kind: AssetKind, reference: str) -> AssetDoc:
        """One version by any of Azure's reference spellings, archived or not."""
        try:
            ref = parse_reference(reference, kind)
        except ReferenceError_ as exc:
            raise InvalidArgument(str(exc)) from None
        return await self._find(ref)

    async def _find(self, ref: AssetRef) -> AssetDoc:
        if ref.version:
            doc = await self._store.assets.get(asset_id(ref.kind, ref.name, ref.version))
            if doc is not None:
                return doc
            versions = sorted(
                (d.spec.version for d in await self._versions(ref.kind, ref.name)), key=version_key
            )
            if not versions:
                raise NotFound(self._missing(ref))
            raise NotFound(
                f"{ref.kind.value} {ref.name!r} has no version {ref.version!r} "
                f"(versions: {', '.join(versions)})"
            )
        live = [d for d in await self._versions(ref.kind, ref.name) if not d.archived]
        if not live:
            raise NotFound(self._missing(ref) + " (or every version of it is archived)")
        return max(live, key=creation_key)

    @staticmethod
    def _missing(ref: AssetRef) -> str:
        return (
            f"{ref.kind.value} {ref.name!r} does not exist "
            f"(`sluice {ref.kind.value} list`; register it with `sluice {ref.kind.value} create`)"
        )

    async def list_versions(
        self, kind: AssetKind, name: str, include_archived: bool, after: str = ""
    ) -> list[AssetDoc]:
        """Every version of `name`, newest first (as Azure lists them), or the latest
        version of every name, by name; with `after` (a `page_token`), those that follow it."""
        where: dict[str, object] = {"spec.asset_kind": kind.value}
        if name:
            where["spec.name"] = name
        docs = [
            d for d in await self._store.assets.find(where) if include_archived or not d.archived
        ]
        if name:
            ordered = newest_first(docs)
        else:
            latest: dict[str, AssetDoc] = {}
            for doc in newest_first(docs):
                latest.setdefault(doc.spec.name, doc)
            ordered = [latest[n] for n in sorted(latest)]
        if after:
            follows = _follows(after, by_name=not name)
            ordered = [d for d in ordered if follows(d)]
        return ordered

    # ---- lineage, archive, restore --------------------------------------------------------

    async def used_by(self, kind: AssetKind, name: str, version: str) -> list[str]:
        """Who uses this version: `endpoint/deployment` of every online or batch deployment
        that names it, then `job <name>` of the latest USED_BY_JOBS batch jobs that read it
        (model, environment or data input), newest first: a data set scored every hour
        would otherwise make every read of it, and every list of its versions, grow
        without end."""
        key = f"{name}:{version}"
        field = {
            AssetKind.model: "spec.model.asset",
            AssetKind.environment: "spec.environment.registered",
        }.get(kind)
        deployments: list[str] = []
        if field is not None:
            for collection in (self._store.online_deployments, self._store.batch_deployments):
                for dep in await collection.find({field: key}):
                    deployments.append(f"{dep.spec.endpoint_name}/{dep.spec.name}")
        jobs = await self._store.jobs_using(f"{kind.value}:{key}", USED_BY_JOBS)
        return sorted(deployments) + [f"job {job}" for job in jobs]

    async def archive(self, kind: AssetKind, name: str, version: str, actor: str) -> list[AssetDoc]:
        """Archive one version, or every version of `name`. As on Azure, archiving only hides
        a version from lists and from `@latest`: deployments and jobs that use it keep it,
        and a reference that names its version still resolves."""
        targets = await self._targets(kind, name, version)
        return [await self._set_archived(doc, True, actor) for doc in targets]

    async def restore(self, kind: AssetKind, name: str, version: str, actor: str) -> list[AssetDoc]:
        targets = await self._targets(kind, name, version)
        return [await self._set_archived(doc, False, actor) for doc in targets]

    async def _targets(self, kind: AssetKind, name: str, version: str) -> list[AssetDoc]:
        if version:
            return [await self._find(AssetRef(kind, name, version))]
        docs = await self._versions(kind, name)
        if not docs:
            raise NotFound(self._missing(AssetRef(kind, name)))
        return docs

    async def _set_archived(self, doc: AssetDoc, archived: bool, actor: str) -> AssetDoc:
        spec = doc.spec
        _id = asset_id(spec.asset_kind, spec.name, spec.version)
        for _ in range(RETRIES):
            current = await self._store.assets.get(_id)
            if current is None:
                raise NotFound(self._missing(AssetRef(spec.asset_kind, spec.name, spec.version)))
            if current.archived == archived:
                return current
            meta = current.meta.model_copy(
                update={"version": current.meta.version + 1, "updated_at": utcnow()}
            )
            updated = current.model_copy(update={"archived": archived, "meta": meta})
            try:
                async with self._store.transaction() as tx:
                    await tx.assets.replace(_id, updated, expected_version=current.meta.version)
                    self._emit(tx, updated, "archived" if archived else "restored", actor)
            except Conflict:
                continue
            return updated
        raise Conflict("too many concurrent changes to the same asset; retry")

    async def update(
        self,
        current: AssetDoc,
        *,
        description: str,
        tags: dict[str, str],
        archived: bool,
        expected_version: int | None,
        actor: str,
        stage: str | None = None,
    ) -> AssetDoc:
        """Change what Azure lets a PUT change on an existing version: its description, tags,
        stage (None: as it is) and archived flag. One write, conditional on the version read
        (`expected_version`, an If-Match ETag, must be it); one event per kind of change."""
        spec = current.spec
        stage = spec.stage if stage is None else stage
        check_text(spec.asset_kind.value, spec.name, description, tags)
        check_length(f"{spec.asset_kind.value} {spec.name!r}: stage", stage, MAX_STAGE)
        if expected_version is not None and expected_version != current.meta.version:
            raise Conflict(
                f"{spec.asset_kind.value} {spec.name!r} version {spec.version!r} is at ETag "
                f'"{current.meta.version}", not "{expected_version}"; GET it again'
            )
        changed = description != spec.description or tags != spec.tags or stage != spec.stage
        if not changed and archived == current.archived:
            return current
        meta = current.meta.model_copy(
            update={"version": current.meta.version + 1, "updated_at": utcnow()}
        )
        updated = current.model_copy(
            update={
                "spec": spec.model_copy(
                    update={"description": description, "tags": tags, "stage": stage}
                ),
                "archived": archived,
                "meta": meta,
            }
        )
        async with self._store.transaction() as tx:
            _id = asset_id(spec.asset_kind, spec.name, spec.version)
            await tx.assets.replace(_id, updated, expected_version=current.meta.version)
            if changed:
                self._emit(tx, updated, "updated", actor)
            if archived != current.archived:
                self._emit(tx, updated, "archived" if archived else "restored", actor)
        return updated

    async def versions_by_name(self, kind: AssetKind) -> dict[str, list[AssetDoc]]:
        """Every version of every name (archived too), oldest first: Azure's containers."""
        out: dict[str, list[AssetDoc]] = {}
        docs = await self._store.assets.find({"spec.asset_kind": kind.value})
        for doc in sorted(docs, key=creation_key):
            out.setdefault(doc.spec.name, []).append(doc)
        return dict(sorted(out.items()))

    @staticmethod
    def _emit(tx: Writes, doc: AssetDoc, verb: str, actor: str) -> None:
        spec = doc.spec
        name = f"{spec.name}:{spec.version}"
        payload = ev.AssetChanged(
            kind=spec.asset_kind.value,
            name=name,
            version=doc.meta.version,
            asset_name=spec.name,
            asset_version=spec.version,
        )
        tx.emit(ev.ASSET_EVENTS[(spec.asset_kind.value, verb)], payload, subject=name, actor=actor)

    # ---- references in deployments -----------------------------------------------------

    async def _usable(self, kind: AssetKind, reference: str) -> AssetDoc:
        """The version a deployment or job uses. A label (`@latest`) never picks an archived
        version; one named by its version is used archived or not, as on Azure ("you can
        still continue to reference and use an archived model")."""
        doc = await self.get(kind, reference)
        if doc.archived:
            log.warning(
                "archived_asset_used", kind=kind.value, name=doc.spec.name, version=doc.spec.version
            )
        return doc

    async def resolve_model(self, model: ModelRef) -> ModelRef:
        if not model.registered:
            return model
        doc = await self._usable(AssetKind.model, model.registered)
        return ModelRef(artifact=doc.spec.artifact, asset=f"{doc.spec.name}:{doc.spec.version}")

    async def resolve_environment(self, env: EnvironmentSpec) -> EnvironmentSpec:
        """A registered/curated environment's content; an inline conda file is checked."""
        if not env.registered:
            check_environment_files("environment", env.conda_file, env.pip_requirements)
            if env.conda_file:
                try:
                    parse_conda_file(env.conda_file)
                except CondaSpecError as exc:
                    raise InvalidArgument(f"environment.conda_file: {exc}") from None
            return env
        try:
            ref = parse_reference(env.registered, AssetKind.environment)
        except ReferenceError_ as exc:
            raise InvalidArgument(str(exc)) from None
        if ref.curated or self._curated.is_curated_name(ref.name):
            try:
                curated = self._curated.get(ref.name)
            except UnknownCuratedEnvironment as exc:
                raise NotFound(str(exc)) from None
            return EnvironmentSpec(registered=str(ref), pip_requirements=curated.pip)
        doc = await self._usable(AssetKind.environment, env.registered)
        return EnvironmentSpec(
            registered=f"{doc.spec.name}:{doc.spec.version}",
            conda_file=doc.spec.conda_file,
            image=doc.spec.image,
            pip_requirements=doc.spec.pip_requirements,
        )

    async def resolve_deployment(self, spec: D) -> D:
        """The spec with its model/environment references replaced by what they name."""
        model = await self.resolve_model(spec.model)
        environment = await self.resolve_environment(spec.environment)
        return spec.model_copy(update={"model": model, "environment": environment})

    async def resolve_data(self, reference: str) -> AssetDoc:
        """A data asset for a batch input (`azureml:name:version`, `name@latest`, ...)."""
        return await self._usable(AssetKind.data, reference)
