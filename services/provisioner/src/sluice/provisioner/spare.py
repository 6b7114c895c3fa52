"""A spare instance: a process that has already imported the heavy libraries.

Starting Python and importing scikit-learn takes seconds; assigning a
deployment to a process that did that ahead of time takes milliseconds. The
provisioner keeps one spare per environment (`python -m
sluice.provisioner.spare numpy sklearn ...`), and to use it writes one JSON
line on its stdin: the inference server's arguments, environment variables,
working directory, log file and, when the platform runs as root, the
deployment's user. The spare then *becomes* that inference server, in the same
process: it opens the log, drops to the deployment's user, replaces its
(already minimal) environment and only then runs the deployment's code.
Closing stdin without a line makes it exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import sys

PR_SET_DUMPABLE = 4


def main() -> None:
    for module in sys.argv[1:]:
        with contextlib.suppress(Exception):  # a library the environment lacks is fine
            importlib.import_module(module)
    from sluice.inference import __main__ as inference

    line = sys.stdin.readline()
    if not line.strip():
        return
    job = json.loads(line)
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if job.get("user"):
        become(*job["user"])
    os.umask(0o077)
    os.environ.clear()
    os.environ.update(job["env"])
    if job.get("cwd"):
        os.chdir(job["cwd"])
    sys.argv = ["python -m sluice.inference", *job["argv"]]
    inference.main()


def become(uid: int, gid: int) -> None:
    """Drop root for the deployment's user, for good (real, effective and saved ids)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    # Changing ids marks the process non-dumpable, which makes its /proc entries root's; the
    # process holds nothing of the platform's, so give them back to the deployment's user.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


if __name__ == "__main__":
    main()
