"""`--workers N`: N server processes accepting on one socket that this parent process binds.

Each worker imports the script and calls init() itself (as gunicorn workers
do on Azure) and reports its own readiness. The parent serves the sum of the
workers' metrics and supervises them: if one exits, it stops the others and
exits with that worker's code (so a failing init() still fails the
instance); SIGTERM/SIGINT stops all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from types import FrameType

import structlog

from sluice.common import gateway_auth
from sluice.inference.app import bind_socket
from sluice.inference.config import ServerConfig
from sluice.inference.metrics import multiprocess_registry, serve_metrics

log = structlog.get_logger("sluice.inference")


def run_workers(config: ServerConfig) -> int:
    sock = bind_socket(config.host, config.port)
    with tempfile.TemporaryDirectory(prefix="sluice-metrics-") as metrics_dir:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        if config.gateway_secret:
            env[gateway_auth.ENV] = config.gateway_secret
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        if config.metrics_port:
            serve_metrics(config.host, config.metrics_port, multiprocess_registry())
        argv = [sys.executable, "-m", "sluice.inference", *config.worker_argv(sock.fileno())]
        workers = [
            subprocess.Popen(argv, env=env, pass_fds=(sock.fileno(),))
            for _ in range(config.workers)
        ]
        log.info("workers_started", pids=[w.pid for w in workers], port=config.port)
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            for worker in workers:
                worker.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        pid, status = os.wait()
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            log.error("worker_exited", pid=pid, exit_code=code)
            stop(signal.SIGTERM, None)
        for worker in workers:
            if worker.pid != pid:
                worker.wait()
        sock.close()
    return 0 if stopping else (code or 1)
