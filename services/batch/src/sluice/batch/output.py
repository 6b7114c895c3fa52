"""Output of `append_row` jobs, in Azure's format, assembled from per-mini-batch parts.

Each mini-batch's rows go to their own part file, named by the mini-batch's
index and replaced atomically, so a mini-batch that runs twice (a worker
killed after writing, a redelivery) still appears once. When the job ends
the parts are concatenated in index order: every row once, in input order.

Azure's format (docs, and the samples that read it back with
`pd.read_csv(..., header=None, sep=" ")`): no header row; a DataFrame's rows
are written space-separated without its index; every other returned item is
one line, `str(item)`. A `.parquet` output file name with DataFrame results
gives a Parquet file instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sluice.common.untrusted import open_plain

PART_DIGITS = 8
MAX_DEPTH = 32  # folders deeper than this in a summary_only job's files are not copied


class OutputError(ValueError):
    """run() returned something Azure's append_row cannot write."""


def part_path(parts: Path, mini_batch: int, parquet: bool) -> Path:
    return parts / f"{mini_batch:0{PART_DIGITS}d}.{'parquet' if parquet else 'txt'}"


def is_parquet(output_file_name: str) -> bool:
    return output_file_name.lower().endswith(".parquet")


def _is_frame(result: Any) -> bool:
    return type(result).__name__ == "DataFrame" and hasattr(result, "to_csv")


def count_rows(result: Any) -> int:
    """How many items run() returned (each counts as one success, as on Azure)."""
    if result is None or isinstance(result, str | bytes):
        raise OutputError(
            f"run() must return a list or a pandas DataFrame, not {type(result).__name__}"
        )
    try:
        return len(result)
    except TypeError:
        raise OutputError(
            f"run() must return a list or a pandas DataFrame, not {type(result).__name__}"
        ) from None


def write_part(result: Any, parts: Path, mini_batch: int, output_file_name: str) -> int:
    """Write one mini-batch's rows atomically; returns the row count."""
    rows = count_rows(result)
    parquet = is_parquet(output_file_name)
    if parquet and not _is_frame(result):
        raise OutputError(
            f"output_file_name {output_file_name!r} is Parquet: run() must return a pandas "
            f"DataFrame, not {type(result).__name__}"
        )
    target = part_path(parts, mini_batch, parquet)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    parts.mkdir(parents=True, exist_ok=True)
    if parquet:
        result.to_parquet(tmp, index=False)
    elif _is_frame(result):
        result.to_csv(tmp, sep=" ", header=False, index=False, lineterminator="\n")
    else:
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(f"{item}\n" for item in result)
    tmp.replace(target)
    # A redelivered mini-batch may change kind (text <-> parquet): keep only the latest.
    part_path(parts, mini_batch, not parquet).unlink(missing_ok=True)
    return rows


def open_part(parts: Path, mini_batch: int, parquet: bool) -> BinaryIO | None:
    """A part to read, or None if there is none; never through a link or to a non-file.

    The parts folder belongs to the deployment's user (workspace.py): a link there to the
    platform's secrets, or a FIFO that would block the runner, is not followed."""
    try:
        folder = os.open(parts, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP, ENOTDIR: a link
        raise OutputError(f"the parts folder {parts} is not a plain folder: {exc}") from None
    try:
        return open_plain(part_path(parts, mini_batch, parquet).name, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a link; NotAPlainFile: a FIFO, a device
        raise OutputError(f"part {mini_batch} of {parts} is not a plain file: {exc}") from None
    finally:
        os.close(folder)


def output_folder(folder: Path, *, create: bool = True) -> Path:
    """`folder`, made if missing, once it is sure to be the platform's all the way down:
    every folder on the way owned by root or the platform's user, none a link. The
    output path is the invoker's choice, checked at invoke to lie under an allowed root;
    that can be a folder a deployment's own code writes (its data collector's), where
    it could have put a link for the runner (root) to write through. OutputError if not;
    `create=False` checks what exists and makes nothing (at invoke)."""
    resolved = folder.resolve()
    platform = {0, os.getuid()}
    for step in [*reversed(resolved.parents), resolved]:
        try:
            seen = step.lstat()
        except FileNotFoundError:
            if not create:
                break
            step.mkdir(mode=0o755)
            seen = step.lstat()
        if stat.S_ISLNK(seen.st_mode) or not stat.S_ISDIR(seen.st_mode):
            raise OutputError(f"the output path {folder}: {step} is not a plain folder")
        if seen.st_uid not in platform:
            raise OutputError(
                f"the output path {folder} is inside {step}, which belongs to another user "
                "(a deployment's own folder): choose an output path of the platform's"
            )
    return resolved


def merge_parts(parts: Path, mini_batches: Sequence[int], target: Path) -> int:
    """Concatenate the parts of `mini_batches`, in order, into `target`; returns bytes written.

    Streams file to file (Parquet: row group by row group), so memory stays
    bounded whatever the job's size. The file is written in a folder only the platform
    can change (`output_folder`), under a fresh name, then renamed over `target`.
    """
    target = output_folder(target.parent) / target.name
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            if is_parquet(target.name):
                _merge_parquet(parts, mini_batches, out)
            else:
                for index in mini_batches:
                    src = open_part(parts, index, parquet=False)
                    if src is not None:
                        with src:
                            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target.stat().st_size


def _merge_parquet(parts: Path, mini_batches: Sequence[int], tmp: BinaryIO) -> None:
    import pyarrow.parquet as pq

    writer: Any = None
    try:
        for index in mini_batches:
            part = open_part(parts, index, parquet=True)
            if part is None:
                continue
            with part:
                source = pq.ParquetFile(part)
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    # No mini-batch returned rows: the file stays empty.


def publish_files(staged: Path, target: Path) -> int:
    """Copy what a summary_only job's workers wrote in `staged` (AZUREML_BI_OUTPUT_PATH, a
    folder of the deployment's user) to `target`, the job's output folder; returns how many
    files. Only folders and plain files, each opened without following a link: the
    workers' code may have left a link to the platform's secrets, or a FIFO, there.
    The copies are the platform's (0644, folders 0755), as an append_row job's output."""
    try:
        source = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    except OSError as exc:  # ELOOP, ENOTDIR: a link
        raise OutputError(
            f"the workers' output folder {staged} is not a plain folder: {exc}"
        ) from None
    try:
        target = output_folder(target)
        into = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return _copy_folder(source, into, MAX_DEPTH)
        finally:
            os.close(into)
    finally:
        os.close(source)


def _copy_folder(source: int, into: int, depth: int) -> int:
    copied = 0
    with os.scandir(source) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        try:  # a link: ELOOP; a FIFO opens at once (O_NONBLOCK) and is skipped below
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=source)
        except OSError:
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode) and depth > 0:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=into)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=into)
                try:
                    copied += _copy_folder(fd, sub, depth - 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(mode):
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                out = os.open(name, flags, 0o644, dir_fd=into)
                with os.fdopen(out, "wb") as writer, os.fdopen(os.dup(fd), "rb") as reader:
                    shutil.copyfileobj(reader, writer, 1 << 20)
                copied += 1
        finally:
            os.close(fd)
    return copied
