"""A spare instance: a process that has already imported the heavy libraries.

Starting Python and importing scikit-learn takes seconds; assigning a
deployment to a process that did that ahead of time takes milliseconds. The
provisioner keeps spares (`python -m sluice.provisioner.spare numpy sklearn
...`; which spare for which deployment: spares.py), and to use one it writes one
JSON line on its stdin, a socket: the inference server's arguments, environment
variables, working directory and, for a spare the platform's root user started,
the deployment's user; with it comes the instance's log file, opened by the
provisioner and passed as an open file (SCM_RIGHTS: a spare running as its
deployment's user cannot open the platform's log folder). The spare then
*becomes* that inference server, in the same process: it takes the log, drops
to the deployment's user (if it is not that user already), replaces its
(already minimal) environment and only then runs the deployment's code.
Closing stdin without a line makes it exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys

from sluice.common.handover import receive, take_log

PR_SET_DUMPABLE = 4


def main() -> None:
    for module in sys.argv[1:]:
        with contextlib.suppress(Exception):  # a library the environment lacks is fine
            importlib.import_module(module)
    from sluice.inference import __main__ as inference

    job, log = receive()
    if job is None:
        return
    take_log(log)
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
