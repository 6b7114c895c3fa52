"""A job's input: a folder, a file, or a `file://` / `http(s)://` URI, as a list of files.

Resolved at invoke time, so an unknown, empty or unreadable input is refused
with a clear message instead of becoming a job that fails later. Folders are
walked recursively in a stable (sorted) order; hidden files are skipped.
Remote files are downloaded into the job's scratch folder with a size limit, from
public addresses only unless an operator allows more (fetch.py says why); a remote
folder is an Azure Blob Storage container path, listed and downloaded by blob_folder.py.
`azureml:` data assets are resolved by the service (it asks the registry) into
the path or URI they name before they get here.

Local paths are read by the platform, not by the caller, so they must lie under
the service's `roots` (its datastore, its artifact store where the CLI uploads a
local --input, and the folders the operator lists in SLUICE_BATCH_PATH_ROOTS),
followed links included: otherwise anyone allowed to invoke a job could have any
file the platform can read (its own secrets) scored and written to an output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from sluice.batch.blob_folder import download_folder
from sluice.batch.fetch import PUBLIC_ONLY, FetchError, UrlPolicy, download
from sluice.batch.jobs import MAX_FILES


class InputError(ValueError):
    """The input cannot be used; the message says why and what would work."""


def check_under(path: Path, roots: Sequence[Path], what: str) -> Path:
    """`path` with every link resolved, when that lies under one of `roots` (resolved
    already: a job checks each of its files against them)."""
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise InputError(
            f"{what} {path} is outside the folders the batch service reads and writes "
            f"({allowed}): the CLI uploads a local --input for you; an operator can add "
            "folders with SLUICE_BATCH_PATH_ROOTS"
        )
    return real


def _check_type(input_type: str) -> str:
    kind = input_type or "uri_folder"
    if kind not in {"uri_folder", "uri_file"}:
        raise InputError(f"--input-type {input_type!r}: use uri_folder or uri_file")
    return kind


def list_folder(folder: Path) -> list[Path]:
    """Every readable file under `folder`, recursively, sorted by relative path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(f"input file {path} cannot be read: {exc.strerror}") from None


def resolve_local(path: Path, input_type: str, roots: Sequence[Path]) -> list[Path]:
    kind = _check_type(input_type)
    if not path.is_absolute():
        raise InputError(f"input path {str(path)!r} must be absolute (the CLI makes it so)")
    check_under(path, roots, "input")
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if path.is_dir():
        if kind == "uri_file":
            raise InputError(f"input {path} is a folder but --input-type is uri_file")
        files = list_folder(path)
        if not files:
            raise InputError(f"input folder {path} has no files")
    else:
        files = [path]
    if len(files) > MAX_FILES:
        raise InputError(f"input has {len(files)} files; a job takes at most {MAX_FILES}")
    for file in files:
        check_under(file, roots, "input file")  # a link inside the folder may lead out
        _readable(file)
    return files


async def resolve(
    text: str,
    input_type: str,
    scratch: Path,
    roots: Sequence[Path],
    urls: UrlPolicy = PUBLIC_ONLY,
) -> list[Path]:
    """The files of an input, in the order mini-batches are cut from them; `urls` says
    which hosts an http(s) input may come from (public ones by default)."""
    text = text.strip()
    if not text:
        raise InputError("--input is required: a folder, a file, or a file:// or https:// URI")
    if text.startswith("azureml:"):
        raise InputError(f"input {text!r} is a data asset reference: resolve it first")
    scheme = urlparse(text).scheme
    if scheme in {"http", "https"}:
        try:
            # Without --input-type a URL is one file (what most URLs given name); a folder
            # says uri_folder, as azureml-examples do.
            if _check_type(input_type) == "uri_folder" and input_type:
                return await download_folder(text, scratch / "inputs", urls, max_files=MAX_FILES)
            return [await download(text, scratch / "inputs", urls)]
        except FetchError as exc:
            raise InputError(str(exc)) from None
    if scheme == "file":
        return resolve_local(Path(unquote(urlparse(text).path)), input_type, roots)
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive, not a URI
        raise InputError(
            f"input {text!r}: {scheme}:// is not supported; use a path, file:// or http(s)://"
        )
    return resolve_local(Path(text), input_type, roots)
