"""Reading, as the platform, files a deployment's own code may have written.

A deployment's data collector and span files live in folders its user owns: its code
can put anything there, a symbolic link to the platform's secrets, a FIFO (which blocks
whoever opens it), a link to /dev/zero (which never ends). These read only plain files,
each opened without following a link, and walk folders without following links.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def plain_files(folder: Path, suffix: str) -> Iterator[tuple[Path, os.stat_result]]:
    """The plain files named `*<suffix>` under `folder`, no link followed."""
    for dirpath, _, filenames in os.walk(folder):  # os.walk descends into no link
        for name in filenames:
            if name.endswith(suffix):
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    seen = path.lstat()
                    if stat.S_ISREG(seen.st_mode):
                        yield path, seen


def open_plain(path: Path | str, dir_fd: int | None = None) -> BinaryIO:
    """`path` (relative to the folder `dir_fd` if given) opened for reading if it is a
    plain file, not a link, a FIFO or a device; OSError otherwise (NotAPlainFile when it
    is something else than a file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAPlainFile(f"{path} is not a plain file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class NotAPlainFile(OSError):
    """What was to be read is a FIFO, a device or a folder."""
