"""Artifacts as tar streams: packed chunk by chunk as `pack` packs them, and unpacked from a
stream (a download) with the checks an upload gets, whatever the sender put in it."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.artifacts import (
    CHUNK_SIZE,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    pack,
    pack_chunks,
    plain_folder_chunks,
    unpack_chunks,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A folder with what models hold: nested and long names, an executable, an empty file,
    a file of several chunks, a link and a hard link inside, a cache that is never packed."""
    root = tmp_path / "model"
    deep = root / "sub" / ("d" * 120)
    deep.mkdir(parents=True)
    (deep / ("f" * 150 + ".txt")).write_text("long name")
    (root / "weights.bin").write_bytes(os.urandom(2 * CHUNK_SIZE + 12345))
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "a.txt").write_text("a")
    (root / "latest").symlink_to("a.txt")
    os.link(root / "a.txt", root / "sub" / "same.txt")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"cache")
    return root


def tarfile_pack(path: Path) -> bytes:
    """The archive tarfile itself writes for `pack`'s entries (pack's former body)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(
            (p for p in [path, *path.rglob("*")] if "__pycache__" not in p.parts),
            key=lambda p: p.relative_to(path.parent).as_posix(),
        ):
            tar.add(
                entry,
                arcname=entry.relative_to(path.parent).as_posix(),
                recursive=False,
                filter=_normalised,
            )
    return buffer.getvalue()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def test_chunks_are_tarfiles_canonical_archive_a_chunk_at_a_time(model: Path) -> None:
    """The same bytes as before the archive was streamed, so an upload's digest (and every
    stored artifact's) is unchanged; every chunk but the last is CHUNK_SIZE."""
    chunks = list(pack_chunks(model))
    assert b"".join(chunks) == tarfile_pack(model) == pack(model)
    assert len(chunks) == 3
    assert {len(c) for c in chunks[:-1]} == {CHUNK_SIZE} and 0 < len(chunks[-1]) <= CHUNK_SIZE


def test_a_stream_unpacks_to_the_same_files(model: Path, tmp_path: Path) -> None:
    into = tmp_path / "into"
    into.mkdir()
    top = unpack_chunks(pack_chunks(model), "model", True, into)
    assert top == into / "model"
    for original in model.rglob("*"):
        if "__pycache__" in original.parts:
            continue
        copy = top / original.relative_to(model)
        if original.is_symlink():
            assert copy.readlink() == Path("a.txt")
        elif original.is_file():
            assert copy.read_bytes() == original.read_bytes(), original
    assert os.access(top / "run.sh", os.X_OK)
    assert not (top / "__pycache__").exists()
    single = tmp_path / "one.csv"
    single.write_text("a,b\n")
    alone = tmp_path / "alone"
    alone.mkdir()
    assert unpack_chunks(pack_chunks(single), "one.csv", False, alone).read_text() == "a,b\n"


def test_a_job_output_is_sent_without_links_or_fifos(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("platform secret")
    output = tmp_path / "out"
    (output / "parts").mkdir(parents=True)
    (output / "predictions.csv").write_text("1\n2\n")
    (output / "parts" / "p.txt").write_text("p")
    (output / "to-secret").symlink_to(secret)
    (output / "folder-link").symlink_to(tmp_path)
    os.mkfifo(output / "fifo")
    into = tmp_path / "into"
    into.mkdir()
    top = unpack_chunks(plain_folder_chunks(output, "score"), "score", True, into)
    found = sorted(p.relative_to(top).as_posix() for p in top.rglob("*"))
    assert found == ["parts", "parts/p.txt", "predictions.csv"]
    assert (top / "predictions.csv").read_text() == "1\n2\n"


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> Iterator[bytes]:
    """A tar stream holding `members` as given (what a hostile sender could send)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    data = buffer.getvalue()
    return iter([data[:700], data[700:]])  # in two chunks, split mid-header


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


FOLDER = (member("model", tarfile.DIRTYPE), b"")
HOSTILE = {
    "a name outside the artifact": [FOLDER, (member("other.txt"), b"x")],
    "an absolute name": [FOLDER, (member("/tmp/sluice-escape.txt"), b"x")],
    "dot-dot out of the target": [FOLDER, (member("model/../../escape.txt"), b"x")],
    "a link to an absolute path": [FOLDER, (member("model/l", tarfile.SYMTYPE, "/etc"), b"")],
    "a link out of the target": [
        FOLDER,
        (member("model/l", tarfile.SYMTYPE, "../../.."), b""),
        (member("model/l/escape.txt"), b"x"),
    ],
    "a link beside the artifact": [FOLDER, (member("model/l", tarfile.SYMTYPE, "../x"), b"")],
    "a link as the artifact": [(member("model", tarfile.SYMTYPE, "."), b"")],
    "a hard link to a file outside": [
        FOLDER,
        (member("model/h", tarfile.LNKTYPE, "/etc/passwd"), b""),
    ],
    "a device": [FOLDER, (member("model/dev", tarfile.CHRTYPE), b"")],
    "a file where a folder was announced": [(member("model"), b"x")],
    "nothing": [],
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(case: str, tmp_path: Path) -> None:
    into = tmp_path / "box" / "into"
    into.mkdir(parents=True)
    with pytest.raises(ArtifactError):
        unpack_chunks(archive(*HOSTILE[case]), "model", True, into)
    assert [p.name for p in (tmp_path / "box").iterdir()] == ["into"]
    assert not Path("/tmp/sluice-escape.txt").exists()
    for path in into.rglob("*"):
        assert path.resolve().is_relative_to(into.resolve()), path


def test_a_senders_error_comes_out_as_it_is(model: Path, tmp_path: Path) -> None:
    """A download ended by the server (a gRPC error) is that error, not a tar error."""

    def broken() -> Iterator[bytes]:
        yield next(pack_chunks(model))
        raise ConnectionError("the registry went away")

    with pytest.raises(ConnectionError, match="went away"):
        unpack_chunks(broken(), "model", True, tmp_path)


def test_a_digest_is_hex_and_names_no_other_folder(tmp_path: Path) -> None:
    """A folder of one file outside the store, named by 64 characters that are no digest,
    is not an artifact (a reader may download artifacts)."""
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "artifacts" / "sha256").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin-token").write_text("s")
    escape = "sha256:../../secrets" + "/" * 51
    assert len(escape) == len("sha256:") + 64
    assert (store.root / "sha256" / escape.removeprefix("sha256:") / "admin-token").exists()
    with pytest.raises(ArtifactError, match="not a sha256 digest"):
        store.stored(escape)
    with pytest.raises(ArtifactNotFound, match="no artifact sha256:a"):
        store.stored("sha256:" + "a" * 64)
