"""Downloads from the platform (`model|data download`, `job download`), wherever it runs.

The registry (DownloadArtifact) and the batch service (DownloadJobOutput) send a tar
stream whose first message names its one top-level file or folder. `started` waits for
that first message, so a refusal (an unknown job, a job still running) raises before
anything is written; `save` unpacks the stream with the checks an upload gets
(`sluice.common.artifacts.unpack_chunks`) into a temporary folder, and only a complete
download is moved into place.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sluice.common.artifacts import ArtifactError, unpack_chunks


@dataclass(frozen=True)
class Download:
    """A download under way: the archive's one top-level entry, and its bytes as they come."""

    name: str
    is_directory: bool
    chunks: Iterator[bytes]


def started(responses: Iterator[Any], error: Callable[[grpc.RpcError], Exception]) -> Download:
    """A download from a server stream of chunk messages (`name` and `is_directory` in the
    first, `data` in each); `error` turns a failed call into the client's SluiceError."""
    try:
        first = next(responses)
    except grpc.RpcError as exc:
        raise error(exc) from None
    except StopIteration:
        raise ArtifactError("the download ended before it began") from None

    def chunks() -> Iterator[bytes]:
        yield first.data
        try:
            for message in responses:
                yield message.data
        except grpc.RpcError as exc:
            raise error(exc) from None

    return Download(first.name, first.is_directory, chunks())


def save(download: Download, target: Path) -> Path:
    """Write `download` at `target` (its file or folder, whatever the archive names it): a
    folder merges into one already there, files replacing files, as `shutil.copytree(...,
    dirs_exist_ok=True)` copies. A download that fails or is refused writes nothing: it is
    unpacked into a temporary folder in the nearest folder that exists, then moved."""
    target = target.absolute()
    base = next(parent for parent in target.parents if parent.is_dir())
    with tempfile.TemporaryDirectory(dir=base, prefix=".sluice-download-") as tmp:
        unpacked = unpack_chunks(download.chunks, download.name, download.is_directory, Path(tmp))
        clashes = list(_clashes(unpacked, target))
        if clashes:  # found before anything moves: a refused merge changes nothing
            raise ArtifactError(
                f"cannot merge the download into {target}: {clashes[0]} is a file in one and "
                "a folder in the other; nothing was written"
            )
        _move(unpacked, target)
    return target


def _clashes(source: Path, target: Path) -> Iterator[Path]:
    """The paths under `target` where the merge would put a file on a folder, or a folder
    on a file: `Path.replace` cannot, and would fail halfway through."""
    if _plain_dir(source):
        if _plain_dir(target):
            for child in source.iterdir():
                yield from _clashes(child, target / child.name)
        elif target.exists() or target.is_symlink():
            yield target
    elif _plain_dir(target):
        yield target


def _move(source: Path, target: Path) -> None:
    if _plain_dir(source) and target.is_dir():
        for child in source.iterdir():
            _move(child, target / child.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.replace(target)


def _plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
