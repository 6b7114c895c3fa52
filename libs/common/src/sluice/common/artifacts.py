"""Content-addressed artifacts: model and code folders, frozen at `create` time.

The client packs a folder (or a single file) into a *canonical* tar archive:
entries sorted, owners, times and permissions normalised, so the same content
always gives the same bytes and the same digest. The registry stores the
unpacked archive under `<root>/sha256/<hex>/<name>`, read-only; that path is
what the provisioner and the batch runner read. Editing or deleting the
user's folder after `create` changes nothing that runs.

Downloads travel the other way in the same form: the registry packs a stored
artifact again (`pack_chunks`), the batch service a job's output folder
(`plain_folder_chunks`), chunk by chunk, and the client unpacks the stream with the
checks an upload gets (`unpack_chunks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import posixpath
import stat
import sys
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sluice.common.resources import ArtifactRef
from sluice.common.untrusted import open_plain

if TYPE_CHECKING or sys.version_info >= (3, 11, 4):
    import tarfile
else:  # extraction filters came in 3.11.4 (Debian 12's python3 is 3.11.2): the same module
    from backports import tarfile

CHUNK_SIZE = 1 << 20
# An archive a chunk at a time, as packing produces it (closed when no longer read).
Chunks = Generator[bytes, None, None]
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


class ArtifactNotFound(ArtifactError):
    """No artifact is stored under the digest asked for."""


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


def _members(path: Path) -> Iterator[tuple[Path, str]]:
    """What `pack` puts in the archive: each entry under `path` and its name there."""
    for entry in _entries(path):
        if entry.is_symlink() and not entry.resolve().is_relative_to(path):
            raise ArtifactError(f"{entry} links outside {path}; copy the file in instead")
        yield entry, entry.relative_to(path.parent).as_posix()


def pack(path: Path) -> bytes:
    """The canonical tar archive of `path` (a folder or a file), named by its basename."""
    return b"".join(pack_chunks(path))


def pack_chunks(path: Path) -> Chunks:
    """`pack(path)`'s bytes, CHUNK_SIZE at a time, the archive never whole in memory."""
    path = path.resolve()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    return tar_chunks(_members(path))


def plain_folder_chunks(folder: Path, name: str) -> Chunks:
    """A canonical tar archive of `folder` as a folder called `name`, CHUNK_SIZE at a time,
    holding only its plain folders and files: a link, FIFO or device in it (which code
    the platform runs could have left) is neither followed nor sent."""
    return tar_chunks(_plain_members(folder, name))


def _plain_members(folder: Path, name: str) -> Iterator[tuple[Path, str]]:
    yield folder, name
    for entry in _entries(folder):
        kind = entry.lstat().st_mode
        if entry != folder and (stat.S_ISDIR(kind) or stat.S_ISREG(kind)):
            yield entry, f"{name}/{entry.relative_to(folder).as_posix()}"


def tar_chunks(members: Iterable[tuple[Path, str]]) -> Chunks:
    """A tar archive of `members` (an entry on disk, its name in the archive), the bytes
    `TarFile.add(entry, arcname, recursive=False, filter=_normalised)` writes, CHUNK_SIZE
    at a time: tarfile itself hands nothing back until a whole file is in.

    A file is read CHUNK_SIZE at a time, opened without following a link; one that
    became shorter since it was listed is an ArtifactError (the header said more).
    """
    # Only for its bookkeeping (hard links, by inode) and its header settings.
    tar = tarfile.TarFile(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT)
    out = _Chunker()
    for entry, arcname in members:
        info = tar.gettarinfo(str(entry), arcname)
        if info is None:  # a socket: tar has no type for it
            continue
        info = _normalised(info)
        yield from out.add(info.tobuf(tar.format, tar.encoding, tar.errors))
        if info.isreg():
            with open_plain(entry) as file:
                for data in _read_exactly(file, info.size, entry):
                    yield from out.add(data)
            yield from out.add(bytes(-info.size % tarfile.BLOCKSIZE))
    # The end of the archive, as TarFile.close writes it: two zero blocks, then zeros to
    # a whole record.
    yield from out.add(bytes(tarfile.BLOCKSIZE * 2))
    yield from out.add(bytes(-out.total % tarfile.RECORDSIZE))
    yield from out.rest()


def _read_exactly(file: BinaryIO, size: int, entry: Path) -> Iterator[bytes]:
    left = size
    while left:
        data = file.read(min(CHUNK_SIZE, left))
        if not data:
            raise ArtifactError(f"{entry} became shorter while it was being read")
        left -= len(data)
        yield data


class _Chunker:
    """Bytes gathered into pieces of exactly CHUNK_SIZE (the last one shorter)."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self.total = 0

    def add(self, data: bytes) -> Iterator[bytes]:
        self._pending += data
        self.total += len(data)
        while len(self._pending) >= CHUNK_SIZE:
            yield bytes(self._pending[:CHUNK_SIZE])
            del self._pending[:CHUNK_SIZE]

    def rest(self) -> Iterator[bytes]:
        if self._pending:
            yield bytes(self._pending)


async def in_thread(chunks: Chunks) -> AsyncIterator[bytes]:
    """`chunks`, each one read in a worker thread: a server's event loop never waits on
    the disk."""
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        # Cancelled while a thread still reads: the generator closes when that read ends
        # and drops it; closing it here would fail ("generator already executing").
        with contextlib.suppress(ValueError):
            chunks.close()


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
        # Hex digits only: a digest is a caller's word, and `..` or `/` would leave the store.
        if algorithm != "sha256" or len(hexdigest) != 64 or not _is_hex(hexdigest):
            raise ArtifactError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / hexdigest

    def stored(self, digest: str) -> ArtifactRef:
        """The artifact stored under `digest` (its folder holds exactly the uploaded file or
        folder); ArtifactNotFound if none is, ArtifactError if `digest` is not one."""
        folder = self.folder(digest)
        found = sorted(folder.iterdir()) if folder.is_dir() else []
        if len(found) != 1:
            raise ArtifactNotFound(
                f"no artifact {digest} is stored: it was never uploaded, or was removed once "
                "nothing used it"
            )
        return ArtifactRef(digest=digest, name=found[0].name, is_directory=found[0].is_dir())

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


def unpack_chunks(chunks: Iterable[bytes], name: str, is_directory: bool, into: Path) -> Path:
    """Extract a streamed archive (a download) that must hold exactly `name`, a folder if
    `is_directory` and a file otherwise, into the folder `into`; returns `into / name`.

    The checks an upload gets (`ArtifactStore.ingest`): tarfile's "data" filter refuses
    absolute names, `..`, links that leave `into`, devices and FIFOs, and clears set-uid
    bits; an entry outside `name`, a link out of it or a wrong kind is an ArtifactError
    (and `into` keeps what was written before: give an empty folder). What the sender
    ends the call with (a gRPC error) comes out of `chunks` as it is.
    """
    if not name or "/" in name or name in {".", ".."}:
        raise ArtifactError(f"artifact name {name!r} must be a plain file or folder name")

    def only_name(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if _top(member.name) != name:
            raise ArtifactError(f"the archive holds {member.name!r}, outside {name!r}")
        checked = tarfile.data_filter(member, dest)
        # The filter keeps links inside `into`; the caller moves only `into / name` away,
        # where a link to a sibling of `name` would point out of what was downloaded.
        if member.issym() or member.islnk():
            base = posixpath.dirname(member.name) if member.issym() else ""
            if _top(posixpath.normpath(posixpath.join(base, member.linkname))) != name:
                raise ArtifactError(
                    f"the archive was refused: {member.name!r} links to {member.linkname!r}, "
                    f"outside {name!r}"
                )
        return checked

    reader = _ChunkReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            tar.extractall(into, filter=only_name)  # noqa: S202 - "data" filter, name checked
    except tarfile.FilterError as exc:
        raise ArtifactError(f"the archive was refused: {exc}") from exc
    except tarfile.TarError as exc:
        raise ArtifactError(f"not a valid tar archive: {exc}") from exc
    reader.drain()  # the end's padding: the sender's call ends, with its status
    top = into / name
    if top.is_symlink() or not top.exists() or top.is_dir() != is_directory:
        kind = "folder" if is_directory else "file"
        raise ArtifactError(f"the archive does not hold {name!r} as a {kind}")
    return top


def _top(member: str) -> str:
    return member.split("/", 1)[0]


class _ChunkReader(io.RawIOBase):
    """An iterable of byte chunks as a file to read, for tarfile's stream mode."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size

    def drain(self) -> None:
        for _ in self._chunks:
            pass


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


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
        or not _is_hex(hexdigits)
        or not name.strip("/")
    ):
        raise ArtifactError(
            f"{uri!r} is not an uploaded artifact ({ARTIFACT_URI_PREFIX}sha256:<hex>/<name>, "
            "a folder ending with /)"
        )
    return ArtifactRef(digest=digest, name=name.strip("/"), is_directory=name.endswith("/"))
