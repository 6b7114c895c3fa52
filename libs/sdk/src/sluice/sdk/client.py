"""Python client for the registry's gRPC API.

`RegistryClient.connect()` finds the local platform (address and admin token
from the per-user state folder, `sluice.common.settings.default_state_dir()`)
unless `SLUICE_REGISTRY_ADDRESS` / `SLUICE_ADMIN_TOKEN` say otherwise. Every call
raises `SluiceError` with the server's message on failure; the resource
models of `sluice.common.resources` go in and come out.
"""

from __future__ import annotations

import getpass
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from sluice.common.artifacts import chunks, pack
from sluice.common.assets import AssetDoc, AssetKind, AssetSpec
from sluice.common.headers import DEPENDENCY_DOWN_KEY
from sluice.common.platform import LocalPlatform
from sluice.common.protoconv import M, to_model, to_proto
from sluice.common.resources import (
    ArtifactRef,
    AuthMode,
    BatchDeploymentDoc,
    BatchDeploymentSpec,
    BatchEndpointDoc,
    BatchEndpointSpec,
    OnlineDeployment,
    OnlineDeploymentSpec,
    OnlineEndpointDoc,
    OnlineEndpointSpec,
)
from sluice.common.settings import Settings
from sluice.sdk.channel import reads_channel, unreachable
from sluice.sdk.download import Download, started
from sluice.v1 import (
    access_pb2,
    access_pb2_grpc,
    assets_pb2,
    assets_pb2_grpc,
    common_pb2,
    provisioner_pb2,
    provisioner_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

T = TypeVar("T")
PAGE_SIZE = 500


class SluiceError(Exception):
    """A call the platform refused; `code` is the gRPC status name (NOT_FOUND, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OnlineEndpoint:
    doc: OnlineEndpointDoc
    scoring_uri: str
    swagger_uri: str


@dataclass(frozen=True)
class BatchEndpoint:
    doc: BatchEndpointDoc
    scoring_uri: str


@dataclass(frozen=True)
class Asset:
    """A registered model, environment or data version, and the deployments using it."""

    doc: AssetDoc
    used_by: tuple[str, ...] = ()


def _asset(msg: Any) -> Asset:
    return Asset(to_model(msg, AssetDoc, exclude=("used_by",)), tuple(msg.used_by))


@dataclass(frozen=True)
class Credentials:
    auth_mode: AuthMode
    primary_key: str = ""
    secondary_key: str = ""
    access_token: str = ""
    expiry_time: datetime | None = None
    refresh_after_time: datetime | None = None  # when a client should fetch a new token


def _utc(message: Message, field: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when unset."""
    return getattr(message, field).ToDatetime(tzinfo=UTC) if message.HasField(field) else None


def _doc(message: Message, model: type[M]) -> M:
    return to_model(message, model, exclude=("scoring_uri", "swagger_uri", "applied_version"))


def admin_token(settings: Settings, state_dir: Path) -> str:
    """The token every client sends: SLUICE_TOKEN (a user's token from `sluice token
    create`), else SLUICE_ADMIN_TOKEN, else the platform's admin-token file."""
    if os.environ.get("SLUICE_TOKEN"):
        return os.environ["SLUICE_TOKEN"]
    if settings.admin_token:
        return settings.admin_token
    token_file = state_dir / "admin-token"
    if not token_file.exists():
        raise SluiceError("UNAUTHENTICATED", f"no admin token in {token_file}")
    return token_file.read_text().strip()


class RegistryClient:
    def __init__(self, address: str, token: str, *, actor: str | None = None):
        self.address = address
        self._channel = reads_channel(
            address,
            [
                registry_pb2.DESCRIPTOR.services_by_name["Registry"],
                assets_pb2.DESCRIPTOR.services_by_name["Assets"],
                access_pb2.DESCRIPTOR.services_by_name["Access"],
            ],
        )
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._assets = assets_pb2_grpc.AssetsStub(self._channel)
        self._access = access_pb2_grpc.AccessStub(self._channel)
        self._metadata = (
            ("authorization", f"Bearer {token}"),
            ("actor", actor or getpass.getuser()),
        )

    @classmethod
    def connect(cls, settings: Settings | None = None) -> RegistryClient:
        """A client for the configured registry, or for the local platform's."""
        settings = settings or Settings()
        platform = LocalPlatform(settings)
        address = settings.registry_address
        if not address:
            state = platform.load_state()
            if state is None or not state.registry_address:
                raise SluiceError(
                    "UNAVAILABLE",
                    f"the platform is not running (no platform in {platform.state_dir}): "
                    "start it with `sluice up`, or set SLUICE_STATE_DIR to the folder of "
                    "a running one (or SLUICE_REGISTRY_ADDRESS)",
                )
            address = state.registry_address
        return cls(address, admin_token(settings, platform.state_dir))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Message | Iterator[Message]) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=30)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> SluiceError:
        code = exc.code()
        trailers = dict(exc.trailing_metadata() or ())
        if code is grpc.StatusCode.UNAVAILABLE and DEPENDENCY_DOWN_KEY in trailers:
            return SluiceError("UNAVAILABLE", exc.details() or code.name)
        if code is grpc.StatusCode.UNAVAILABLE:
            return SluiceError(
                "UNAVAILABLE",
                unreachable("the registry", self.address, exc)
                + ": is the platform up (`sluice status`)?",
            )
        return SluiceError(code.name, exc.details() or code.name)

    def _paged(
        self, method: Callable[..., Any], request_type: Any, field: str, **fields: Any
    ) -> Iterator[Any]:
        """Every item of a paginated List call, fetching pages as they are consumed."""
        token = ""
        while True:
            page = common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=token)
            response = self._call(method, request_type(page=page, **fields))
            yield from getattr(response, field)
            token = response.page.next_page_token
            if not token:
                return

    # ---- artifacts ----------------------------------------------------------------------

    def upload(self, path: Path) -> ArtifactRef:
        """Pack a file or folder canonically and store it; the same content gives the same ref."""
        archive = pack(path)
        first = True

        def requests() -> Iterator[registry_pb2.ArtifactChunk]:
            nonlocal first
            for data in chunks(archive) if archive else [b""]:
                if first:
                    first = False
                    yield registry_pb2.ArtifactChunk(
                        name=path.resolve().name, is_directory=path.is_dir(), data=data
                    )
                else:
                    yield registry_pb2.ArtifactChunk(data=data)

        ref = self._call(self._stub.UploadArtifact, requests())
        return ArtifactRef(digest=ref.digest, name=ref.name, is_directory=ref.is_directory)

    def download(self, digest: str) -> Download:
        """A stored artifact's files as a tar stream (`download.save` writes them); raises
        SluiceError at once if nothing is stored under `digest`. No deadline: a large
        model takes as long as the network needs, as a followed log does."""
        request = registry_pb2.DownloadArtifactRequest(digest=digest)
        return started(self._stub.DownloadArtifact(request, metadata=self._metadata), self._error)

    # ---- online endpoints ---------------------------------------------------------------

    @staticmethod
    def _online_endpoint(msg: registry_pb2.OnlineEndpoint) -> OnlineEndpoint:
        return OnlineEndpoint(
            doc=_doc(msg, OnlineEndpointDoc),
            scoring_uri=msg.scoring_uri,
            swagger_uri=msg.swagger_uri,
        )

    def create_online_endpoint(self, spec: OnlineEndpointSpec) -> OnlineEndpoint:
        request = registry_pb2.CreateOnlineEndpointRequest(
            spec=to_proto(spec, registry_pb2.OnlineEndpointSpec())
        )
        return self._online_endpoint(self._call(self._stub.CreateOnlineEndpoint, request))

    def get_online_endpoint(self, name: str) -> OnlineEndpoint:
        request = registry_pb2.GetOnlineEndpointRequest(name=name)
        return self._online_endpoint(self._call(self._stub.GetOnlineEndpoint, request))

    def list_online_endpoints(self) -> list[OnlineEndpoint]:
        items = self._paged(
            self._stub.ListOnlineEndpoints, registry_pb2.ListOnlineEndpointsRequest, "endpoints"
        )
        return [self._online_endpoint(m) for m in items]

    def update_online_endpoint(
        self,
        spec: OnlineEndpointSpec,
        *,
        with_traffic: bool,
        with_mirror_traffic: bool,
        expected_version: int | None = None,
    ) -> OnlineEndpoint:
        request = registry_pb2.UpdateOnlineEndpointRequest(
            spec=to_proto(spec, registry_pb2.OnlineEndpointSpec()),
            has_traffic=with_traffic,
            has_mirror_traffic=with_mirror_traffic,
            expected_version=expected_version,
        )
        return self._online_endpoint(self._call(self._stub.UpdateOnlineEndpoint, request))

    def set_traffic(
        self, name: str, shares: dict[str, int], *, mirror: bool = False
    ) -> OnlineEndpoint:
        request = registry_pb2.SetTrafficRequest(endpoint_name=name, traffic=shares)
        method = self._stub.SetMirrorTraffic if mirror else self._stub.SetTraffic
        return self._online_endpoint(self._call(method, request))

    def delete_online_endpoint(self, name: str) -> None:
        self._call(
            self._stub.DeleteOnlineEndpoint, registry_pb2.DeleteOnlineEndpointRequest(name=name)
        )

    # ---- per-user tokens (admin role) -----------------------------------------------------

    def create_token(
        self, user: str, role: str, description: str = "", expires_in_s: int = 0
    ) -> Any:
        """A new token (`.secret` is shown once) for `user` with `role` reader|deployer|admin,
        refused `expires_in_s` seconds from now (0: never)."""
        roles = {
            "reader": access_pb2.ROLE_READER,
            "deployer": access_pb2.ROLE_DEPLOYER,
            "admin": access_pb2.ROLE_ADMIN,
        }
        if role not in roles:
            raise SluiceError("INVALID_ARGUMENT", f"role must be one of {', '.join(roles)}")
        request = access_pb2.CreateTokenRequest(
            user=user, role=roles[role], description=description, expires_in_s=expires_in_s
        )
        return self._call(self._access.CreateToken, request)

    def list_tokens(self, include_revoked: bool = False) -> list[Any]:
        request = access_pb2.ListTokensRequest(include_revoked=include_revoked)
        return list(self._call(self._access.ListTokens, request).tokens)

    def revoke_token(self, token_id: str) -> Any:
        return self._call(self._access.RevokeToken, access_pb2.RevokeTokenRequest(id=token_id))

    def get_credentials(self, name: str) -> Credentials:
        msg = self._call(
            self._stub.GetCredentials, registry_pb2.GetCredentialsRequest(endpoint_name=name)
        )
        mode = (
            AuthMode.aml_token if msg.auth_mode == common_pb2.AUTH_MODE_AML_TOKEN else AuthMode.key
        )
        return Credentials(
            auth_mode=mode,
            primary_key=msg.primary_key,
            secondary_key=msg.secondary_key,
            access_token=msg.access_token,
            expiry_time=_utc(msg, "expiry_time"),
            refresh_after_time=_utc(msg, "refresh_after_time"),
        )

    def regenerate_key(self, name: str, key_type: str) -> OnlineEndpoint:
        which = {
            "primary": registry_pb2.KEY_TYPE_PRIMARY,
            "secondary": registry_pb2.KEY_TYPE_SECONDARY,
        }
        request = registry_pb2.RegenerateKeysRequest(
            endpoint_name=name, key_type=which.get(key_type, registry_pb2.KEY_TYPE_UNSPECIFIED)
        )
        return self._online_endpoint(self._call(self._stub.RegenerateKeys, request))

    def jwks(self) -> str:
        return str(self._call(self._stub.GetJwks, registry_pb2.GetJwksRequest()).json)

    # ---- online deployments -------------------------------------------------------------

    def create_online_deployment(self, spec: OnlineDeploymentSpec) -> OnlineDeployment:
        request = registry_pb2.CreateOnlineDeploymentRequest(
            spec=to_proto(spec, registry_pb2.OnlineDeploymentSpec())
        )
        return _doc(self._call(self._stub.CreateOnlineDeployment, request), OnlineDeployment)

    def get_online_deployment(self, endpoint: str, name: str) -> OnlineDeployment:
        request = registry_pb2.GetDeploymentRequest(endpoint_name=endpoint, name=name)
        return _doc(self._call(self._stub.GetOnlineDeployment, request), OnlineDeployment)

    def list_online_deployments(self, endpoint: str) -> list[OnlineDeployment]:
        items = self._paged(
            self._stub.ListOnlineDeployments,
            registry_pb2.ListDeploymentsRequest,
            "deployments",
            endpoint_name=endpoint,
        )
        return [_doc(m, OnlineDeployment) for m in items]

    def update_online_deployment(
        self, spec: OnlineDeploymentSpec, expected_version: int | None = None
    ) -> OnlineDeployment:
        request = registry_pb2.UpdateOnlineDeploymentRequest(
            spec=to_proto(spec, registry_pb2.OnlineDeploymentSpec()),
            expected_version=expected_version,
        )
        return _doc(self._call(self._stub.UpdateOnlineDeployment, request), OnlineDeployment)

    def delete_online_deployment(self, endpoint: str, name: str) -> None:
        request = registry_pb2.DeleteDeploymentRequest(endpoint_name=endpoint, name=name)
        self._call(self._stub.DeleteOnlineDeployment, request)

    # ---- batch --------------------------------------------------------------------------

    @staticmethod
    def _batch_endpoint(msg: registry_pb2.BatchEndpoint) -> BatchEndpoint:
        return BatchEndpoint(doc=_doc(msg, BatchEndpointDoc), scoring_uri=msg.scoring_uri)

    def create_batch_endpoint(self, spec: BatchEndpointSpec) -> BatchEndpoint:
        request = registry_pb2.CreateBatchEndpointRequest(
            spec=to_proto(spec, registry_pb2.BatchEndpointSpec())
        )
        return self._batch_endpoint(self._call(self._stub.CreateBatchEndpoint, request))

    def get_batch_endpoint(self, name: str) -> BatchEndpoint:
        request = registry_pb2.GetBatchEndpointRequest(name=name)
        return self._batch_endpoint(self._call(self._stub.GetBatchEndpoint, request))

    def list_batch_endpoints(self) -> list[BatchEndpoint]:
        items = self._paged(
            self._stub.ListBatchEndpoints, registry_pb2.ListBatchEndpointsRequest, "endpoints"
        )
        return [self._batch_endpoint(m) for m in items]

    def update_batch_endpoint(self, spec: BatchEndpointSpec) -> BatchEndpoint:
        request = registry_pb2.UpdateBatchEndpointRequest(
            spec=to_proto(spec, registry_pb2.BatchEndpointSpec())
        )
        return self._batch_endpoint(self._call(self._stub.UpdateBatchEndpoint, request))

    def delete_batch_endpoint(self, name: str) -> None:
        self._call(
            self._stub.DeleteBatchEndpoint, registry_pb2.DeleteBatchEndpointRequest(name=name)
        )

    def create_batch_deployment(
        self, spec: BatchDeploymentSpec, *, set_default: bool = False
    ) -> BatchDeploymentDoc:
        request = registry_pb2.CreateBatchDeploymentRequest(
            spec=to_proto(spec, registry_pb2.BatchDeploymentSpec()), set_default=set_default
        )
        return _doc(self._call(self._stub.CreateBatchDeployment, request), BatchDeploymentDoc)

    def get_batch_deployment(self, endpoint: str, name: str) -> BatchDeploymentDoc:
        request = registry_pb2.GetDeploymentRequest(endpoint_name=endpoint, name=name)
        return _doc(self._call(self._stub.GetBatchDeployment, request), BatchDeploymentDoc)

    def list_batch_deployments(self, endpoint: str) -> list[BatchDeploymentDoc]:
        items = self._paged(
            self._stub.ListBatchDeployments,
            registry_pb2.ListDeploymentsRequest,
            "deployments",
            endpoint_name=endpoint,
        )
        return [_doc(m, BatchDeploymentDoc) for m in items]

    def update_batch_deployment(self, spec: BatchDeploymentSpec) -> BatchDeploymentDoc:
        request = registry_pb2.UpdateBatchDeploymentRequest(
            spec=to_proto(spec, registry_pb2.BatchDeploymentSpec())
        )
        return _doc(self._call(self._stub.UpdateBatchDeployment, request), BatchDeploymentDoc)

    def delete_batch_deployment(self, endpoint: str, name: str) -> None:
        request = registry_pb2.DeleteDeploymentRequest(endpoint_name=endpoint, name=name)
        self._call(self._stub.DeleteBatchDeployment, request)

    # ---- registered assets ----------------------------------------------------------------

    def create_asset(self, spec: AssetSpec) -> Asset:
        request = assets_pb2.CreateAssetRequest(spec=to_proto(spec, assets_pb2.AssetSpec()))
        return _asset(self._call(self._assets.CreateAsset, request))

    def register_inline_model(self, spec: AssetSpec) -> str:
        """A deployment YAML's inline model with a name (`model: {name, version, path}`) is
        registered as that model version, as az registers it; a version already registered
        with the same files is reused, one with other files is refused (versions are
        immutable). Returns the `name:version` the deployment then names."""
        reference = f"{spec.name}:{spec.version}"
        try:
            self.create_asset(spec)
            return reference
        except SluiceError as exc:
            if exc.code != "ALREADY_EXISTS":
                raise
        existing = self.get_asset(AssetKind.model, reference).doc.spec.artifact
        if existing is None or spec.artifact is None or existing.digest != spec.artifact.digest:
            raise SluiceError(
                "ALREADY_EXISTS",
                f"model {spec.name!r} version {spec.version!r} is already registered with other "
                "files: versions are immutable; give the deployment's model a new version",
            )
        return reference

    def get_asset(self, kind: AssetKind, reference: str) -> Asset:
        """One version by reference: `name:version`, `name@latest`, `azureml:...`."""
        request = assets_pb2.GetAssetRequest(kind=kind.value, reference=reference)
        return _asset(self._call(self._assets.GetAsset, request))

    def list_assets(
        self,
        kind: AssetKind,
        name: str = "",
        *,
        include_archived: bool = False,
        limit: int | None = None,
    ) -> list[Asset]:
        """Every version of `name` (newest first), or the latest of every name; page by
        page (each under 1 MiB), so no answer reaches gRPC's 4 MiB message limit."""
        items = self._paged(
            self._assets.ListAssets,
            assets_pb2.ListAssetsRequest,
            "assets",
            kind=kind.value,
            name=name,
            include_archived=include_archived,
        )
        return [_asset(m) for m in itertools.islice(items, limit)]

    def archive_asset(self, kind: AssetKind, name: str, version: str = "") -> Asset:
        request = assets_pb2.ArchiveAssetRequest(kind=kind.value, name=name, version=version)
        return _asset(self._call(self._assets.ArchiveAsset, request))

    def restore_asset(self, kind: AssetKind, name: str, version: str = "") -> Asset:
        request = assets_pb2.ArchiveAssetRequest(kind=kind.value, name=name, version=version)
        return _asset(self._call(self._assets.RestoreAsset, request))

    def update_asset(
        self,
        kind: AssetKind,
        name: str,
        version: str,
        *,
        description: str,
        tags: dict[str, str],
        stage: str,
        expected_version: int = 0,
    ) -> Asset:
        """Set a version's description, tags and stage (what a version may change)."""
        request = assets_pb2.UpdateAssetRequest(
            kind=kind.value,
            name=name,
            version=version,
            description=description,
            tags=tags,
            stage=stage,
            expected_version=expected_version,
        )
        return _asset(self._call(self._assets.UpdateAsset, request))

    def resolve_data(self, reference: str) -> AssetDoc:
        """A data asset named by a batch input (`azureml:my-data:1`, `azureml:my-data@latest`).

        Raises SluiceError for a malformed or missing reference; `@latest` never names an
        archived version, an explicit version is used archived or not (as on Azure). The
        asset's files are `doc.spec.artifact` (in the artifact store) or the URI
        `doc.spec.path`.
        """
        return self.get_asset(AssetKind.data, reference).doc


@dataclass(frozen=True)
class InstanceLogs:
    text: str
    instance_id: str
    path: str


def get_logs(
    endpoint: str,
    deployment: str,
    *,
    lines: int = 0,
    container: str = "",
    instance_id: str = "",
    settings: Settings | None = None,
) -> InstanceLogs:
    """The log of a deployment's newest instance, or of `instance_id` (also one that has
    stopped: a crashed one auto-recovery replaced), or of its environment build."""
    request = provisioner_pb2.GetLogsRequest(
        endpoint_name=endpoint,
        deployment_name=deployment,
        lines=lines,
        container=container,
        instance_id=instance_id,
    )
    reply: provisioner_pb2.Logs = _provisioner_call("GetLogs", request, settings)
    return InstanceLogs(text=reply.text, instance_id=reply.instance_id, path=reply.path)


def get_collected(
    endpoint: str,
    deployment: str,
    *,
    collection: str = "",
    since_s: int = 0,
    limit: int = 0,
    settings: Settings | None = None,
) -> provisioner_pb2.Collected:
    """What the deployment's data collector wrote: files, the newest records, drop counts."""
    request = provisioner_pb2.GetCollectedRequest(
        endpoint_name=endpoint,
        deployment_name=deployment,
        collection=collection,
        since_seconds=since_s,
        limit=limit,
    )
    reply: provisioner_pb2.Collected = _provisioner_call("GetCollected", request, settings)
    return reply


def _provisioner_call(method: str, request: Any, settings: Settings | None) -> Any:
    """One call of the provisioner's API (the local platform's, or SLUICE_PROVISIONER_ADDRESS)."""
    settings = settings or Settings()
    platform = LocalPlatform(settings)
    address = settings.provisioner_address
    if not address:
        state = platform.load_state()
        found = [p for p in (state.processes if state else []) if p.name == "provisioner"]
        if not found:
            raise SluiceError(
                "UNAVAILABLE",
                "no provisioner runs on this platform (`sluice status`); "
                "set SLUICE_PROVISIONER_ADDRESS for a remote one",
            )
        address = found[0].address
    token = settings.admin_token or (platform.state_dir / "admin-token").read_text().strip()
    with grpc.insecure_channel(address) as channel:
        stub = provisioner_pb2_grpc.ProvisionerStub(channel)
        try:
            return getattr(stub, method)(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as exc:
            raise SluiceError(exc.code().name, exc.details() or exc.code().name) from None
