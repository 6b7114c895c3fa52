"""A spare instance: a process that has already imported the heavy libraries.

Starting Python and importing scikit-learn takes seconds; assigning a
deployment to a process that did that ahead of time takes milliseconds. The
provisioner keeps one spare per environment (`python -m
sluice.provisioner.spare numpy sklearn ...`), and to use it writes one JSON
line on its stdin: the inference server's arguments, environment variables,
working directory and log file. The spare then *becomes* that inference
server, in the same process. Closing stdin without a line makes it exit.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys


def main() -> None:
    for module in sys.argv[1:]:
        with contextlib.suppress(Exception):  # a library the environment lacks is fine
            importlib.import_module(module)
    from sluice.inference import __main__ as inference

    line = sys.stdin.readline()
    if not line.strip():
        return
    job = json.loads(line)
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.update(job["env"])
    if job.get("cwd"):
        os.chdir(job["cwd"])
    sys.argv = ["python -m sluice.inference", *job["argv"]]
    inference.main()


if __name__ == "__main__":
    main()
