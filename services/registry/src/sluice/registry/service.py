"""The registry's use cases: validate, then store each change with its events.

Every rejected call raises before anything is written, so stored state is
unchanged. Each change and the events that announce it are written in one
MongoDB transaction (the outbox, sluice.common.events): both or neither, and
a NATS outage cannot fail the call. Read-modify-write calls are conditional on
the version they read; when the caller gave no `expected_version`, a lost race
is retried on fresh state (the merge is re-validated), otherwise it is
reported as a conflict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sluice.common.artifacts import ArtifactStore
from sluice.common.events import catalogue as ev
from sluice.common.log import get_logger
from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    BatchEndpointDoc,
    BatchEndpointSpec,
    Meta,
    OnlineDeployment,
    OnlineDeploymentDoc,
    OnlineDeploymentSpec,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
    ProvisioningState,
    deployment_id,
    utcnow,
)
from sluice.common.secretbox import SecretBox
from sluice.registry import domain
from sluice.registry.assets import AssetService
from sluice.registry.credentials import Token, TokenIssuer, new_key
from sluice.registry.domain import (
    Conflict,
    EndpointKind,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sluice.registry.store import Page, RegistryStore

log = get_logger(__name__)
T = TypeVar("T")
RETRIES = 5
MAX_PAGE = 1000
DEFAULT_PAGE = 100


@dataclass(frozen=True)
class EndpointCredentials:
    auth_mode: AuthMode
    primary_key: str = ""
    secondary_key: str = ""
    token: Token | None = None


def _bump(meta: Meta, state: ProvisioningState | None = None) -> Meta:
    changes: dict[str, object] = {"version": meta.version + 1, "updated_at": utcnow()}
    if state is not None:
        changes["provisioning_state"] = state
        changes["status_message"] = ""
    return meta.model_copy(update=changes)


def _subject(doc: OnlineDeploymentDoc | BatchDeploymentDoc) -> str:
    """The CloudEvents subject of a deployment event: `<endpoint>/<name>`."""
    return f"{doc.spec.endpoint_name}/{doc.spec.name}"


def _page_size(size: int) -> int:
    if size < 0 or size > MAX_PAGE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE}, got {size}")
    return size or DEFAULT_PAGE


async def _with_retries(expected_version: int | None, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a read-modify-write; retry lost races unless the caller pinned a version."""
    for _ in range(RETRIES if expected_version is None else 1):
        try:
            return await attempt()
        except Conflict:
            if expected_version is not None:
                raise
    raise Conflict("too many concurrent changes to the same resource; retry")


def _check_expected(meta: Meta, expected_version: int | None, what: str) -> None:
    if expected_version is not None and expected_version != meta.version:
        raise Conflict(
            f"{what} is at version {meta.version}, not {expected_version}; read it again and retry"
        )


class RegistryService:
    def __init__(
        self,
        store: RegistryStore,
        secrets: SecretBox,
        tokens: TokenIssuer,
        artifacts: ArtifactStore,
        assets: AssetService,
    ):
        self._assets = assets
        self._store = store
        self._secrets = secrets
        self._tokens = tokens
        self._artifacts = artifacts

    # ---- online endpoints -------------------------------------------------------------

    async def create_online_endpoint(
        self, spec: OnlineEndpointSpec, actor: str
    ) -> OnlineEndpointDoc:
        domain.check_online_endpoint(spec)
        if any(spec.traffic.values()) or any(spec.mirror_traffic.values()):
            raise InvalidArgument(
                f"endpoint {spec.name!r} has no deployments yet, so its traffic must be empty; "
                "create the deployments, then set traffic"
            )
        spec = spec.model_copy(update={"traffic": {}, "mirror_traffic": {}})
        doc = OnlineEndpointDoc(
            spec=spec,
            meta=Meta(created_by=actor, provisioning_state=ProvisioningState.succeeded),
            keys={
                "primary": self._secrets.encrypt(new_key()),
                "secondary": self._secrets.encrypt(new_key()),
            },
        )

        async def attempt() -> None:
            async with self._store.transaction() as tx:
                await tx.online_endpoints.insert(spec.name, doc)
                await tx.endpoint_names.reserve(spec.name, EndpointKind.online)
                data = ev.EndpointChanged(name=spec.name, version=1)
                tx.emit(ev.ENDPOINT_CREATED, data, subject=spec.name, actor=actor)

        # A create that lost a race for the name is retried: it then says who holds it.
        await _with_retries(None, attempt)
        log.info("endpoint_created", endpoint=spec.name, actor=actor)
        return doc

    async def get_online_endpoint(self, name: str) -> OnlineEndpointDoc:
        doc = await self._store.online_endpoints.get(name)
        if doc is None:
            raise NotFound(
                f"online endpoint {name!r} does not exist (`sluice online-endpoint list`)"
            )
        return doc

    async def applied_version(self, name: str) -> int:
        """The version of the endpoint Envoy serves (the traffic controller's record), 0 if none."""
        return await self._store.applied_version(name)

    async def list_online_endpoints(self, size: int, after: str) -> Page[OnlineEndpointDoc]:
        return await self._store.online_endpoints.page(size=_page_size(size), after=after)

    async def _deployment_names(self, endpoint: str) -> list[str]:
        docs = await self._store.online_deployments.find({"spec.endpoint_name": endpoint})
        return [d.spec.name for d in docs]

    async def update_online_endpoint(
        self,
        spec: OnlineEndpointSpec,
        *,
        traffic: Mapping[str, int] | None,
        mirror_traffic: Mapping[str, int] | None,
        expected_version: int | None,
        actor: str,
        replace: bool = False,
    ) -> OnlineEndpointDoc:
        """Replace description, tags and auth mode; merge traffic/mirror maps if given (or,
        with `replace`, make them the whole split: deployments they leave out get 0)."""
        domain.check_online_endpoint(spec)

        async def attempt() -> OnlineEndpointDoc:
            current = await self.get_online_endpoint(spec.name)
            _check_expected(current.meta, expected_version, f"endpoint {spec.name!r}")
            if spec.kind is not current.spec.kind:
                raise InvalidArgument(
                    f"endpoint {spec.name!r} is {current.spec.kind.value}; the kind cannot change"
                )
            updated = current.spec.model_copy(
                update={
                    "description": spec.description,
                    "tags": spec.tags,
                    "auth_mode": spec.auth_mode,
                    "compute": spec.compute,
                }
            )
            return await self._store_traffic(
                current, updated, traffic, mirror_traffic, actor, replace=replace
            )

        return await _with_retries(expected_version, attempt)

    async def set_traffic(
        self,
        name: str,
        *,
        traffic: Mapping[str, int] | None,
        mirror_traffic: Mapping[str, int] | None,
        expected_version: int | None,
        actor: str,
    ) -> OnlineEndpointDoc:
        async def attempt() -> OnlineEndpointDoc:
            current = await self.get_online_endpoint(name)
            _check_expected(current.meta, expected_version, f"endpoint {name!r}")
            return await self._store_traffic(current, current.spec, traffic, mirror_traffic, actor)

        return await _with_retries(expected_version, attempt)

    async def _store_traffic(
        self,
        current: OnlineEndpointDoc,
        spec: OnlineEndpointSpec,
        traffic: Mapping[str, int] | None,
        mirror: Mapping[str, int] | None,
        actor: str,
        *,
        replace: bool = False,
    ) -> OnlineEndpointDoc:
        deployments = await self._deployment_names(spec.name)
        new_traffic = dict(current.spec.traffic)
        if traffic is not None:
            base = {} if replace else current.spec.traffic
            new_traffic = domain.merge_traffic(base, traffic, deployments)
        new_mirror = dict(current.spec.mirror_traffic)
        if mirror is not None:
            base = {} if replace else current.spec.mirror_traffic
            new_mirror = domain.merge_mirror(base, mirror, new_traffic, deployments)
        else:
            domain.check_mirror(new_mirror, new_traffic)
        spec = spec.model_copy(update={"traffic": new_traffic, "mirror_traffic": new_mirror})
        doc = current.model_copy(update={"spec": spec, "meta": _bump(current.meta)})
        version = doc.meta.version
        traffic_changed = (
            new_traffic != current.spec.traffic or new_mirror != current.spec.mirror_traffic
        )
        async with self._store.transaction() as tx:
            await tx.online_endpoints.replace(spec.name, doc, expected_version=current.meta.version)
            data = ev.EndpointChanged(name=spec.name, version=version)
            tx.emit(ev.ENDPOINT_UPDATED, data, subject=spec.name, actor=actor)
            if traffic_changed:
                split = ev.TrafficChanged(
                    name=spec.name, version=version, traffic=new_traffic, mirror_traffic=new_mirror
                )
                tx.emit(ev.TRAFFIC_CHANGED, split, subject=spec.name, actor=actor)
        if traffic_changed:
            log.info("traffic_changed", endpoint=spec.name, traffic=new_traffic, mirror=new_mirror)
        return doc

    async def delete_online_endpoint(self, name: str, actor: str) -> None:
        """Delete the endpoint and its deployments; the name is free again at once."""

        async def attempt() -> int:
            async with self._store.transaction() as tx:
                # In the transaction: a deployment created concurrently touched the
                # endpoint, so one of the two transactions conflicts and is retried.
                endpoint = await tx.online_endpoints.get(name)
                if endpoint is None:
                    raise NotFound(f"online endpoint {name!r} does not exist")
                deployments = await tx.online_deployments.find({"spec.endpoint_name": name})
                await tx.online_deployments.delete_many({"spec.endpoint_name": name})
                await tx.online_endpoints.delete(name)
                await tx.endpoint_names.release(name, EndpointKind.online)
                for dep in deployments:
                    data = ev.DeploymentChanged(
                        name=dep.spec.name, endpoint=name, version=dep.meta.version
                    )
                    tx.emit(ev.DEPLOYMENT_DELETED, data, subject=_subject(dep), actor=actor)
                gone = ev.EndpointChanged(name=name, version=endpoint.meta.version)
                tx.emit(ev.ENDPOINT_DELETED, gone, subject=name, actor=actor)
                return len(deployments)

        await self.get_online_endpoint(name)
        count = await _with_retries(None, attempt)
        log.info("endpoint_deleted", endpoint=name, deployments=count, actor=actor)

    # ---- credentials ------------------------------------------------------------------

    async def get_credentials(self, name: str, actor: str) -> EndpointCredentials:
        endpoint = await self.get_online_endpoint(name)
        if endpoint.spec.auth_mode is AuthMode.aml_token:
            token = self._tokens.issue(name, subject=actor)
            return EndpointCredentials(auth_mode=AuthMode.aml_token, token=token)
        return EndpointCredentials(
            auth_mode=AuthMode.key,
            primary_key=self._secrets.decrypt(endpoint.keys["primary"]),
            secondary_key=self._secrets.decrypt(endpoint.keys["secondary"]),
        )

    async def get_token(self, name: str, actor: str) -> Token:
        endpoint = await self.get_online_endpoint(name)
        if endpoint.spec.auth_mode is not AuthMode.aml_token:
            raise FailedPrecondition(
                f"endpoint {name!r} uses key auth; get its keys with "
                f"`sluice online-endpoint get-credentials --name {name}`"
            )
        return self._tokens.issue(name, subject=actor)

    async def regenerate_key(self, name: str, which: str, actor: str) -> OnlineEndpointDoc:
        if which not in ("primary", "secondary"):
            raise InvalidArgument(f"key type must be 'primary' or 'secondary', got {which!r}")

        async def attempt() -> OnlineEndpointDoc:
            current = await self.get_online_endpoint(name)
            if current.spec.auth_mode is not AuthMode.key:
                raise FailedPrecondition(
                    f"endpoint {name!r} uses {current.spec.auth_mode.value} auth and has no keys"
                )
            keys = {**current.keys, which: self._secrets.encrypt(new_key())}
            doc = current.model_copy(update={"keys": keys, "meta": _bump(current.meta)})
            async with self._store.transaction() as tx:
                await tx.online_endpoints.replace(name, doc, expected_version=current.meta.version)
                data = ev.KeysRegenerated(name=name, version=doc.meta.version, key_type=which)
                tx.emit(ev.KEYS_REGENERATED, data, subject=name, actor=actor)
            return doc

        doc = await _with_retries(None, attempt)
        log.info("keys_regenerated", endpoint=name, key_type=which, actor=actor)
        return doc

    @property
    def jwks(self) -> str:
        return self._tokens.jwks

    # ---- online deployments ---------------------------------------------------------------

    def _check_artifacts(self, *refs: ArtifactRef | None) -> None:
        for ref in refs:
            if ref is not None and not self._artifacts.exists(ref):
                raise InvalidArgument(
                    f"artifact {ref.name!r} ({ref.digest}) was not uploaded; "
                    "upload it with UploadArtifact first (the CLI does this for you)"
                )

    def _check_files(self, spec: OnlineDeploymentSpec | BatchDeploymentSpec) -> None:
        """The model and code were uploaded, and the scoring script is a file of the code.
        The CLI checks the script in the user's folder before it uploads; an update that
        names another script of the stored code (`--set code_configuration.scoring_script=
        other.py`) or a REST PUT uploads nothing, so this is the check they get."""
        code = spec.code_configuration
        self._check_artifacts(spec.model.artifact, code.code)
        if code.code is None or not code.scoring_script:
            return
        folder = self._artifacts.path_of(code.code).resolve()
        script = (folder / code.scoring_script).resolve()
        if not script.is_relative_to(folder) or not script.is_file():
            raise InvalidArgument(
                f"code_configuration.scoring_script: {code.scoring_script!r} is not a file in "
                f"the deployment's code ({code.code.name!r}, {code.code.digest})"
            )

    async def create_online_deployment(
        self, spec: OnlineDeploymentSpec, actor: str
    ) -> OnlineDeploymentDoc:
        endpoint = await self.get_online_endpoint(spec.endpoint_name)
        spec = await self._assets.resolve_deployment(spec)
        domain.check_online_deployment(spec, endpoint.spec)
        self._check_files(spec)
        doc = OnlineDeploymentDoc(spec=spec, meta=Meta(created_by=actor))

        async def attempt() -> None:
            async with self._store.transaction() as tx:
                # Writing the endpoint makes a concurrent endpoint delete conflict with
                # this transaction: the deployment is never stored under a deleted endpoint.
                if not await tx.online_endpoints.touch(spec.endpoint_name):
                    raise NotFound(f"online endpoint {spec.endpoint_name!r} was deleted meanwhile")
                await tx.online_deployments.insert(
                    deployment_id(spec.endpoint_name, spec.name), doc
                )
                data = ev.DeploymentChanged(name=spec.name, endpoint=spec.endpoint_name, version=1)
                tx.emit(ev.DEPLOYMENT_CREATED, data, subject=_subject(doc), actor=actor)

        await _with_retries(None, attempt)
        log.info("deployment_created", endpoint=spec.endpoint_name, deployment=spec.name)
        return doc

    async def get_online_deployment(self, endpoint: str, name: str) -> OnlineDeployment:
        """The deployment with the instances the provisioner reports for it."""
        doc = await self._store.online_deployments.get(deployment_id(endpoint, name))
        if doc is None:
            await self.get_online_endpoint(endpoint)
            raise NotFound(
                f"deployment {name!r} does not exist in endpoint {endpoint!r} "
                f"(`sluice online-deployment list --endpoint-name {endpoint}`)"
            )
        (joined,) = await self._store.with_instances([doc])
        return joined

    async def list_online_deployments(
        self, endpoint: str, size: int, after: str
    ) -> Page[OnlineDeployment]:
        await self.get_online_endpoint(endpoint)
        page = await self._store.online_deployments.page(
            size=_page_size(size), after=after, where={"spec.endpoint_name": endpoint}
        )
        return Page(await self._store.with_instances(page.items), page.next_token)

    async def update_online_deployment(
        self, spec: OnlineDeploymentSpec, expected_version: int | None, actor: str
    ) -> OnlineDeploymentDoc:
        endpoint = await self.get_online_endpoint(spec.endpoint_name)
        spec = await self._assets.resolve_deployment(spec)
        domain.check_online_deployment(spec, endpoint.spec)
        self._check_files(spec)

        async def attempt() -> OnlineDeploymentDoc:
            current = await self.get_online_deployment(spec.endpoint_name, spec.name)
            _check_expected(current.meta, expected_version, f"deployment {spec.name!r}")
            meta = _bump(current.meta, ProvisioningState.updating)
            doc = OnlineDeploymentDoc(spec=spec, meta=meta)
            async with self._store.transaction() as tx:
                await tx.online_deployments.replace(
                    deployment_id(spec.endpoint_name, spec.name),
                    doc,
                    expected_version=current.meta.version,
                )
                data = ev.DeploymentChanged(
                    name=spec.name, endpoint=spec.endpoint_name, version=meta.version
                )
                tx.emit(ev.DEPLOYMENT_UPDATED, data, subject=_subject(doc), actor=actor)
            return doc

        return await _with_retries(expected_version, attempt)

    async def delete_online_deployment(self, endpoint_name: str, name: str, actor: str) -> None:
        async def attempt() -> None:
            endpoint = await self.get_online_endpoint(endpoint_name)
            deployment = await self.get_online_deployment(endpoint_name, name)
            domain.check_deletable(name, endpoint.spec.traffic, endpoint.spec.mirror_traffic)
            async with self._store.transaction() as tx:
                await tx.online_deployments.delete(deployment_id(endpoint_name, name))
                # The endpoint is written too, on the version whose traffic was checked: a
                # traffic change racing this delete (one that gives the deployment a share)
                # then conflicts with it, and whichever loses sees the other's outcome.
                await tx.online_endpoints.replace(
                    endpoint_name,
                    endpoint.model_copy(update={"meta": _bump(endpoint.meta)}),
                    expected_version=endpoint.meta.version,
                )
                data = ev.DeploymentChanged(
                    name=name, endpoint=endpoint_name, version=deployment.meta.version
                )
                tx.emit(ev.DEPLOYMENT_DELETED, data, subject=_subject(deployment), actor=actor)

        await _with_retries(None, attempt)
        log.info("deployment_deleted", endpoint=endpoint_name, deployment=name, actor=actor)

    # ---- batch endpoints ------------------------------------------------------------------

    async def create_batch_endpoint(self, spec: BatchEndpointSpec, actor: str) -> BatchEndpointDoc:
        domain.check_batch_endpoint(spec)
        if spec.default_deployment:
            raise InvalidArgument(
                f"batch endpoint {spec.name!r} has no deployments yet; create one with "
                "`sluice batch-deployment create --set-default` instead of naming a default"
            )
        doc = BatchEndpointDoc(
            spec=spec, meta=Meta(created_by=actor, provisioning_state=ProvisioningState.succeeded)
        )

        async def attempt() -> None:
            async with self._store.transaction() as tx:
                await tx.batch_endpoints.insert(spec.name, doc)
                await tx.endpoint_names.reserve(spec.name, EndpointKind.batch)
                data = ev.BatchEndpointChanged(name=spec.name, version=1)
                tx.emit(ev.BATCH_ENDPOINT_CREATED, data, subject=spec.name, actor=actor)

        await _with_retries(None, attempt)
        return doc

    async def get_batch_endpoint(self, name: str) -> BatchEndpointDoc:
        doc = await self._store.batch_endpoints.get(name)
        if doc is None:
            raise NotFound(f"batch endpoint {name!r} does not exist (`sluice batch-endpoint list`)")
        return doc

    async def list_batch_endpoints(self, size: int, after: str) -> Page[BatchEndpointDoc]:
        return await self._store.batch_endpoints.page(size=_page_size(size), after=after)

    async def update_batch_endpoint(
        self, spec: BatchEndpointSpec, expected_version: int | None, actor: str
    ) -> BatchEndpointDoc:
        domain.check_batch_endpoint(spec)

        async def attempt() -> BatchEndpointDoc:
            current = await self.get_batch_endpoint(spec.name)
            _check_expected(current.meta, expected_version, f"batch endpoint {spec.name!r}")
            default = spec.default_deployment or current.spec.default_deployment
            if default != current.spec.default_deployment:
                await self.get_batch_deployment(spec.name, default)
            updated = spec.model_copy(update={"default_deployment": default})
            doc = current.model_copy(update={"spec": updated, "meta": _bump(current.meta)})
            async with self._store.transaction() as tx:
                await tx.batch_endpoints.replace(
                    spec.name, doc, expected_version=current.meta.version
                )
                data = ev.BatchEndpointChanged(name=spec.name, version=doc.meta.version)
                tx.emit(ev.BATCH_ENDPOINT_UPDATED, data, subject=spec.name, actor=actor)
            return doc

        return await _with_retries(expected_version, attempt)

    async def set_default_deployment(
        self, endpoint_name: str, deployment: str, actor: str
    ) -> BatchEndpointDoc:
        current = await self.get_batch_endpoint(endpoint_name)
        spec = current.spec.model_copy(update={"default_deployment": deployment})
        return await self.update_batch_endpoint(spec, None, actor)

    async def delete_batch_endpoint(self, name: str, actor: str) -> None:
        async def attempt() -> None:
            async with self._store.transaction() as tx:
                endpoint = await tx.batch_endpoints.get(name)
                if endpoint is None:
                    raise NotFound(f"batch endpoint {name!r} does not exist")
                deployments = await tx.batch_deployments.find({"spec.endpoint_name": name})
                await tx.batch_deployments.delete_many({"spec.endpoint_name": name})
                await tx.batch_endpoints.delete(name)
                await tx.endpoint_names.release(name, EndpointKind.batch)
                for dep in deployments:
                    data = ev.BatchDeploymentChanged(
                        name=dep.spec.name, endpoint=name, version=dep.meta.version
                    )
                    tx.emit(ev.BATCH_DEPLOYMENT_DELETED, data, subject=_subject(dep), actor=actor)
                gone = ev.BatchEndpointChanged(name=name, version=endpoint.meta.version)
                tx.emit(ev.BATCH_ENDPOINT_DELETED, gone, subject=name, actor=actor)

        await self.get_batch_endpoint(name)
        await _with_retries(None, attempt)

    # ---- batch deployments ----------------------------------------------------------------

    async def create_batch_deployment(
        self, spec: BatchDeploymentSpec, set_default: bool, actor: str
    ) -> BatchDeploymentDoc:
        endpoint = await self.get_batch_endpoint(spec.endpoint_name)
        spec = await self._assets.resolve_deployment(spec)
        domain.check_batch_deployment(spec)
        self._check_files(spec)
        # Creating until the batch service has built its environment (Succeeded) or could
        # not (Failed, with the installer's message), as Azure's deployments.
        doc = BatchDeploymentDoc(
            spec=spec, meta=Meta(created_by=actor, provisioning_state=ProvisioningState.creating)
        )

        async def attempt() -> None:
            async with self._store.transaction() as tx:
                if not await tx.batch_endpoints.touch(spec.endpoint_name):
                    raise NotFound(f"batch endpoint {spec.endpoint_name!r} was deleted meanwhile")
                await tx.batch_deployments.insert(deployment_id(spec.endpoint_name, spec.name), doc)
                data = ev.BatchDeploymentChanged(
                    name=spec.name, endpoint=spec.endpoint_name, version=1
                )
                tx.emit(ev.BATCH_DEPLOYMENT_CREATED, data, subject=_subject(doc), actor=actor)

        await _with_retries(None, attempt)
        if set_default or not endpoint.spec.default_deployment:
            await self.set_default_deployment(spec.endpoint_name, spec.name, actor)
        return doc

    async def get_batch_deployment(self, endpoint: str, name: str) -> BatchDeploymentDoc:
        doc = await self._store.batch_deployments.get(deployment_id(endpoint, name))
        if doc is None:
            await self.get_batch_endpoint(endpoint)
            raise NotFound(
                f"deployment {name!r} does not exist in batch endpoint {endpoint!r} "
                f"(`sluice batch-deployment list --endpoint-name {endpoint}`)"
            )
        return doc

    async def list_batch_deployments(
        self, endpoint: str, size: int, after: str
    ) -> Page[BatchDeploymentDoc]:
        await self.get_batch_endpoint(endpoint)
        return await self._store.batch_deployments.page(
            size=_page_size(size), after=after, where={"spec.endpoint_name": endpoint}
        )

    async def update_batch_deployment(
        self, spec: BatchDeploymentSpec, expected_version: int | None, actor: str
    ) -> BatchDeploymentDoc:
        spec = await self._assets.resolve_deployment(spec)
        domain.check_batch_deployment(spec)
        self._check_files(spec)

        async def attempt() -> BatchDeploymentDoc:
            current = await self.get_batch_deployment(spec.endpoint_name, spec.name)
            _check_expected(current.meta, expected_version, f"deployment {spec.name!r}")
            meta = _bump(current.meta, ProvisioningState.updating)
            doc = current.model_copy(update={"spec": spec, "meta": meta})
            async with self._store.transaction() as tx:
                await tx.batch_deployments.replace(
                    deployment_id(spec.endpoint_name, spec.name),
                    doc,
                    expected_version=current.meta.version,
                )
                data = ev.BatchDeploymentChanged(
                    name=spec.name, endpoint=spec.endpoint_name, version=doc.meta.version
                )
                tx.emit(ev.BATCH_DEPLOYMENT_UPDATED, data, subject=_subject(doc), actor=actor)
            return doc

        return await _with_retries(expected_version, attempt)

    async def delete_batch_deployment(self, endpoint_name: str, name: str, actor: str) -> None:
        endpoint = await self.get_batch_endpoint(endpoint_name)
        deployment = await self.get_batch_deployment(endpoint_name, name)
        others = await self._store.batch_deployments.find({"spec.endpoint_name": endpoint_name})
        if endpoint.spec.default_deployment == name and len(others) > 1:
            raise FailedPrecondition(
                f"deployment {name!r} is the default of batch endpoint {endpoint_name!r}; make "
                "another one the default first (`sluice batch-endpoint update --name "
                f"{endpoint_name} --set defaults.deployment_name=<other>`)"
            )
        async with self._store.transaction() as tx:
            await tx.batch_deployments.delete(deployment_id(endpoint_name, name))
            if endpoint.spec.default_deployment == name:
                spec = endpoint.spec.model_copy(update={"default_deployment": ""})
                doc = endpoint.model_copy(update={"spec": spec, "meta": _bump(endpoint.meta)})
                await tx.batch_endpoints.replace(
                    endpoint_name, doc, expected_version=endpoint.meta.version
                )
                data = ev.BatchEndpointChanged(name=endpoint_name, version=doc.meta.version)
                tx.emit(ev.BATCH_ENDPOINT_UPDATED, data, subject=endpoint_name, actor=actor)
            gone = ev.BatchDeploymentChanged(
                name=name, endpoint=endpoint_name, version=deployment.meta.version
            )
            tx.emit(ev.BATCH_DEPLOYMENT_DELETED, gone, subject=_subject(deployment), actor=actor)
