"""Before a spec version can run locally: its artifacts, environment and instance type.

`Preparer.prepare` turns a deployment document into a `Generation` (what every
instance of that version is started with) or a `PrepareError` that says why the
version cannot run; the error becomes the deployment's Failed message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sluice.common.artifacts import ArtifactError, ArtifactStore
from sluice.common.catalogue import Catalogue, InstanceType, UnknownInstanceType
from sluice.common.environments import EnvironmentBuilder, EnvironmentError_
from sluice.common.isolation import IsolationError
from sluice.common.log import get_logger
from sluice.common.resources import STATUS_WARNING_PREFIX, ArtifactRef, OnlineDeploymentDoc
from sluice.provisioner.local import InstancePlan, LocalBackend

log = get_logger(__name__)
# Fields that can change without restarting instances.
SCALING_FIELDS = frozenset({"instance_count", "scale_settings", "description", "tags"})


class PrepareError(Exception):
    """A spec version cannot run (missing artifact, environment build, instance type)."""


@dataclass(frozen=True)
class Generation:
    """Everything needed to start instances of one spec version."""

    version: int
    doc: OnlineDeploymentDoc
    plan: InstancePlan
    instance_type: InstanceType
    # What the environment could not honour (python version, image, curated environment...),
    # kept on the deployment's status once it succeeds and printed by create/update.
    warnings: tuple[str, ...] = ()

    @property
    def status_message(self) -> str:
        return "\n".join(f"{STATUS_WARNING_PREFIX}{w}" for w in self.warnings)

    def renumbered(self, doc: OnlineDeploymentDoc) -> Generation:
        """The same runtime under a newer spec version (only the count or labels changed)."""
        return Generation(doc.meta.version, doc, self.plan, self.instance_type, self.warnings)


def same_runtime(old: OnlineDeploymentDoc, new: OnlineDeploymentDoc) -> bool:
    """Whether `new` runs exactly what `old` runs (instances can stay)."""
    keep = set(type(new.spec).model_fields) - SCALING_FIELDS
    return old.spec.model_dump(include=keep) == new.spec.model_dump(include=keep)


class Preparer:
    def __init__(
        self,
        environments: EnvironmentBuilder,
        artifacts: ArtifactStore,
        catalogue: Catalogue,
        backend: LocalBackend,
    ):
        self._environments = environments
        self._artifacts = artifacts
        self._catalogue = catalogue
        self._backend = backend

    async def prepare(self, doc: OnlineDeploymentDoc) -> Generation:
        spec = doc.spec
        try:
            instance_type = self._catalogue.resolve(spec.instance_type)
            model = self._path(spec.model.artifact) if spec.model.artifact else None
            if spec.model.registered:
                raise PrepareError(
                    f"model {spec.model.registered!r} is a registered model reference; Sluice has "
                    "no model registry yet: give the model's `path:` instead"
                )
            code = spec.code_configuration
            code_path = self._path(code.code) if code.code else None
        except (UnknownInstanceType, ArtifactError) as exc:
            raise PrepareError(str(exc)) from exc
        try:
            env = await self._environments.ensure(spec.environment)
        except EnvironmentError_ as exc:
            raise PrepareError(str(exc)) from exc
        for warning in env.warnings:
            log.warning(
                "environment_warning",
                deployment=f"{spec.endpoint_name}/{spec.name}",
                warning=warning,
            )
        plan = InstancePlan(
            python=env.python,
            model=model,
            code=code_path,
            scoring_script=code.scoring_script or None,
        )
        try:  # the deployment's own user and private copies of its files (isolation.py)
            plan = await asyncio.to_thread(self._backend.prepare, spec, plan)
        except (IsolationError, OSError) as exc:
            raise PrepareError(f"cannot isolate the deployment: {exc}") from exc
        return Generation(doc.meta.version, doc, plan, instance_type, tuple(env.warnings))

    def _path(self, ref: ArtifactRef) -> Path:
        path = self._artifacts.path_of(ref)
        if not path.exists():
            raise ArtifactError(f"artifact {ref.name!r} ({ref.digest}) is missing from the store")
        return path
