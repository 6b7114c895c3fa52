"""Content-addressed artifacts: model and code folders, frozen at `create` time.

The client packs a folder (or a single file) into a *canonical* tar archive:
entries sorted, owners, times and permissions normalised, so the same content
always gives the same bytes and the same digest. The registry stores the
unpacked archive under `<root>/sha256/<hex>/<name>`, read-only; that path is
what the provisioner and the batch runner read. Editing or deleting the
user's folder after `create` changes nothing that runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterable, Iterator
from pathlib import Path

from sluice.common.resources import ArtifactRef

CHUNK_SIZE = 1 << 20
# Never packed: caches and VCS folders that change without the content changing.
IGNORED = frozenset({"__pycache__", ".git", ".ipynb_checkpoints", ".DS_Store"})

# The largest artifact the REST API takes in one PUT /artifacts/{name} body: Envoy's
# transcoder holds the whole body, and the registry takes it as one gRPC message. Larger
# folders go through the streamed gRPC UploadArtifact (the CLI), chunk by chunk.
REST_UPLOAD_MAX_BYTES = 64 * 1024 * 1024
# How an uploaded file or folder is named wherever a path or URI is taken or printed (the
# REST API's modelUri/dataUri/codeId, the CLI's `path`, YAML `path:`, a batch --input).
ARTIFACT_URI_PREFIX = "azureml://artifacts/"


class ArtifactError(ValueError):
    """The artifact cannot be packed or stored; the message says why."""


def _entries(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED)
        here = Path(dirpath)
        found.extend(here / d for d in dirnames)
        found.extend(here / f for f in sorted(filenames) if f not in IGNORED)
    return sorted(found, key=lambda p: p.relative_to(root.parent).as_posix())


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    executable = info.mode & stat.S_IXUSR
    info.mode = 0o755 if info.isdir() or executable else 0o644
    return info


def pack(path: Path) -> bytes:
    """The canonical tar archive of `path` (a folder or a file), named by its basename."""
    path = path.resolve()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _entries(path):
            if entry.is_symlink() and not entry.resolve().is_relative_to(path):
                raise ArtifactError(f"{entry} links outside {path}; copy the file in instead")
            arcname = entry.relative_to(path.parent).as_posix()
            tar.add(entry, arcname=arcname, recursive=False, filter=_normalised)
    return buffer.getvalue()


def chunks(archive: bytes) -> Iterator[bytes]:
    for start in range(0, len(archive), CHUNK_SIZE):
        yield archive[start : start + CHUNK_SIZE]


def digest_of(archive: bytes) -> str:
    return "sha256:" + hashlib.sha256(archive).hexdigest()


class ArtifactStore:
    """Unpacked artifacts under `root`, one read-only folder per digest."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ArtifactError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / hexdigest

    def path_of(self, ref: ArtifactRef) -> Path:
        """Where the file or folder the user uploaded now lives."""
        return self.folder(ref.digest) / ref.name

    def exists(self, ref: ArtifactRef) -> bool:
        return self.path_of(ref).exists()

    async def ingest(
        self, name: str, is_directory: bool, data: AsyncIterable[bytes]
    ) -> ArtifactRef:
        """Store an uploaded archive; idempotent (the same bytes give the same ref)."""
        if not name or "/" in name or name in {".", ".."}:
            raise ArtifactError(f"artifact name {name!r} must be a plain file or folder name")
        self.root.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".upload-") as tmp:
            archive = Path(tmp) / "archive.tar"
            with archive.open("wb") as out:
                async for chunk in data:
                    hasher.update(chunk)
                    out.write(chunk)
            ref = ArtifactRef(
                digest="sha256:" + hasher.hexdigest(), name=name, is_directory=is_directory
            )
            target = self.folder(ref.digest)
            if target.exists():  # uploaded again: a call is about to use it (artifact_gc)
                # The same bytes hold the same top-level entry: another announced name or
                # kind is a wrong request, not this artifact (it was never unpacked again).
                top = target / ref.name
                if not top.exists() or top.is_dir() != is_directory:
                    found = sorted(p.name for p in target.iterdir())
                    raise ArtifactError(
                        f"archive must hold exactly {name!r} as a "
                        f"{'folder' if is_directory else 'file'}, found {found}"
                    )
                with contextlib.suppress(OSError):
                    os.utime(target)
            else:
                self._unpack(archive, Path(tmp) / "tree", ref)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    (Path(tmp) / "tree").rename(target)
                except OSError:
                    if not target.exists():  # another upload of the same bytes won the race
                        raise
        return ref

    @staticmethod
    def _unpack(archive: Path, tree: Path, ref: ArtifactRef) -> None:
        tree.mkdir()
        try:
            with tarfile.open(archive) as tar:
                names = {m.name.split("/", 1)[0] for m in tar.getmembers()}
                if names != {ref.name}:
                    raise ArtifactError(
                        f"archive must hold exactly {ref.name!r}, found {sorted(names)}"
                    )
                tar.extractall(tree, filter="data")
        except tarfile.TarError as exc:
            raise ArtifactError(f"not a valid tar archive: {exc}") from exc
        top = tree / ref.name
        if top.is_dir() != ref.is_directory:
            kind = "folder" if ref.is_directory else "file"
            raise ArtifactError(f"{ref.name!r} was announced as a {kind} but is not one")
        _make_read_only(tree)


def _make_read_only(tree: Path) -> None:
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            file = Path(dirpath) / name
            file.chmod(file.stat().st_mode & ~0o222)


def artifact_uri(ref: ArtifactRef) -> str:
    """`azureml://artifacts/sha256:<hex>/<name>`, with a `/` at the end for a folder."""
    return f"{ARTIFACT_URI_PREFIX}{ref.digest}/{ref.name}" + ("/" if ref.is_directory else "")


def parse_artifact_uri(uri: str) -> ArtifactRef:
    """The artifact an `azureml://artifacts/...` URI names; ArtifactError if malformed."""
    digest, _, name = uri.strip().removeprefix(ARTIFACT_URI_PREFIX).partition("/")
    hexdigits = digest.removeprefix("sha256:")
    if (
        not uri.strip().startswith(ARTIFACT_URI_PREFIX)
        or not digest.startswith("sha256:")
        or len(hexdigits) != 64
        or not all(c in "0123456789abcdef" for c in hexdigits)
        or not name.strip("/")
    ):
        raise ArtifactError(
            f"{uri!r} is not an uploaded artifact ({ARTIFACT_URI_PREFIX}sha256:<hex>/<name>, "
            "a folder ending with /)"
        )
    return ArtifactRef(digest=digest, name=name.strip("/"), is_directory=name.endswith("/"))
