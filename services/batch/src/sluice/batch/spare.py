"""A spare batch worker: a process that has already imported what workers need.

Starting Python and importing pandas, scikit-learn, FastStream and the
worker takes seconds (8-10 s on a loaded 2-core machine), which dominated
small jobs. The batch service keeps spares per environment and deployment
variables (`python -m sluice.batch.spare numpy pandas ...`, see spares.py);
to use one it writes one JSON line on its stdin (a socket): the worker's
whole environment (its configuration included) and working directory, with
the worker's log file, opened by the runner, passed along (SCM_RIGHTS: as
root, spares run as the deployment's user, who cannot open the runner's
folder). The spare then *becomes* that worker in the same process: it takes the log,
replaces its (already minimal) environment, moves to the working directory
and runs `sluice.batch.worker`. Closing stdin without a line makes it exit.

Spares are started with the deployment's own environment variables, so
libraries that read them once at import (OMP_NUM_THREADS and the like)
see the values the deployment asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile

from sluice.common.handover import receive, take_log


def main() -> None:
    for module in sys.argv[1:]:
        with contextlib.suppress(Exception):  # a library the environment lacks is fine
            importlib.import_module(module)
    from sluice.batch import worker

    print(f"spare {os.getpid()} ready", flush=True)  # to spares.log: its imports are done
    job, log = receive()
    if job is None:
        return
    take_log(log)
    os.environ.clear()
    os.environ.update(job["env"])
    tempfile.tempdir = None  # TMPDIR is the job's now
    os.chdir(job["cwd"])
    sys.path[0] = job["cwd"]  # as `python -m` started in that folder would have it
    worker.main()


if __name__ == "__main__":
    main()
