"""Command line of the inference server, and the settings it yields."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 5001  # the port of Azure's inference server
DEFAULT_TIMEOUT_MS = 5000  # Azure's request_timeout_ms default
DEFAULT_MAX_PAYLOAD = 100 * 1024 * 1024  # Azure documents no limit; this one keeps memory bounded
DEFAULT_BATCH_WAIT_MS = 10


@dataclass(frozen=True)
class ServerConfig:
    model: Path | None
    code: Path | None
    scoring_script: str | None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    metrics_port: int = 0  # 0 = no metrics server
    grpc_port: int = 0  # the Open Inference Protocol over gRPC (oip_grpc.py); 0 = none
    workers: int = 1
    max_concurrent_requests: int = 1
    max_queue: int = 1
    request_timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    max_batch_size: int = 1  # > 1: adaptive batching for a run() that takes batches
    max_batch_wait_ms: int = DEFAULT_BATCH_WAIT_MS
    log_level: str = "info"
    log_format: str = "auto"
    listen_fd: int | None = None  # set by the parent for worker processes
    # Data collection (collector.py): the deployment's folder and what goes there.
    collect_dir: Path | None = None
    collect: tuple[str, ...] = ()
    collect_sampling_rate: float = 1.0
    collect_rolling_rate: str = "hour"
    collect_max_bytes: int = 1024**3
    # Tracing (tracing.py): on when spans have somewhere to go.
    trace_dir: Path | None = None
    trace_otlp_endpoint: str | None = None
    trace_sampling_ratio: float = 0.01

    @property
    def tracing(self) -> bool:
        return self.trace_dir is not None or bool(self.trace_otlp_endpoint)

    # Requests must carry it in the x-sluice-gateway header (sluice.common.gateway_auth);
    # None = any caller (a server run by hand or by `--local`).
    gateway_secret: str | None = field(default=None, repr=False)

    @property
    def script_path(self) -> Path | None:
        if self.scoring_script is None:
            return None
        return (self.code or Path.cwd()) / self.scoring_script

    def worker_argv(self, listen_fd: int) -> list[str]:
        """The arguments of one worker process that accepts on the parent's socket."""
        argv = [
            "--host", self.host,
            "--port", str(self.port),
            "--grpc-port", str(self.grpc_port),
            "--max-concurrent-requests", str(self.max_concurrent_requests),
            "--max-queue", str(self.max_queue),
            "--request-timeout-ms", str(self.request_timeout_ms),
            "--max-payload-bytes", str(self.max_payload_bytes),
            "--max-batch-size", str(self.max_batch_size),
            "--max-batch-wait-ms", str(self.max_batch_wait_ms),
            "--log-level", self.log_level,
            "--log-format", self.log_format,
            "--listen-fd", str(listen_fd),
        ]  # fmt: skip
        if self.model is not None:
            argv += ["--model", str(self.model)]
        if self.code is not None:
            argv += ["--code", str(self.code)]
        if self.scoring_script is not None:
            argv += ["--scoring-script", self.scoring_script]
        if self.trace_dir is not None:
            argv += ["--trace-dir", str(self.trace_dir)]
        if self.trace_otlp_endpoint:
            argv += ["--trace-otlp-endpoint", self.trace_otlp_endpoint]
        argv += ["--trace-sampling-ratio", repr(self.trace_sampling_ratio)]
        if self.collect_dir is not None and self.collect:
            argv += [
                "--collect-dir", str(self.collect_dir),
                "--collect", ",".join(self.collect),
                "--collect-sampling-rate", repr(self.collect_sampling_rate),
                "--collect-rolling-rate", self.collect_rolling_rate,
                "--collect-max-bytes", str(self.collect_max_bytes),
            ]  # fmt: skip
        return argv


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sluice.inference",
        description="Serve an Azure ML scoring script (init/run) or a model file over HTTP.",
    )
    p.add_argument("--model", type=Path, help="model file or folder (sets AZUREML_MODEL_DIR)")
    p.add_argument("--code", type=Path, help="folder of the scoring script (put on sys.path)")
    p.add_argument("--scoring-script", help="script path inside --code; omit for a built-in scorer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics; 0 = none")
    p.add_argument(
        "--grpc-port", type=int, default=0, help="Open Inference Protocol over gRPC; 0 = none"
    )
    p.add_argument("--workers", type=_positive, default=1, help="worker processes")
    p.add_argument(
        "--max-concurrent-requests", type=_positive, default=1, help="run() calls at once"
    )
    p.add_argument(
        "--max-queue", type=int, default=None, help="requests waiting (default: as concurrent)"
    )
    p.add_argument("--request-timeout-ms", type=_positive, default=DEFAULT_TIMEOUT_MS)
    p.add_argument("--max-payload-bytes", type=_positive, default=DEFAULT_MAX_PAYLOAD)
    # Deployments opt in through their environment_variables, as Azure's server reads its own.
    p.add_argument(
        "--max-batch-size",
        type=_positive,
        default=None,
        help="rows merged into one run() call (adaptive batching; env MAX_BATCH_SIZE)",
    )
    p.add_argument(
        "--max-batch-wait-ms",
        type=_positive,
        default=None,
        help="longest wait of a request for its batch (env MAX_BATCH_WAIT_MS)",
    )
    p.add_argument("--collect-dir", type=Path, help="data collection: the deployment's folder")
    p.add_argument(
        "--collect", default="", help="collections: model_inputs,model_outputs,request,response"
    )
    p.add_argument("--collect-sampling-rate", type=float, default=1.0, help="0.0-1.0")
    p.add_argument("--collect-rolling-rate", choices=["minute", "hour", "day"], default="hour")
    p.add_argument("--collect-max-bytes", type=_positive, default=1024**3)
    p.add_argument("--trace-dir", type=Path, help="tracing: write spans as JSON lines here")
    p.add_argument("--trace-otlp-endpoint", help="tracing: send spans to this OTLP/gRPC collector")
    p.add_argument(
        "--trace-sampling-ratio", type=float, default=0.01, help="share of new traces recorded"
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    p.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _from_env(p: argparse.ArgumentParser, given: int | None, name: str, default: int) -> int:
    if given is not None:
        return given
    text = os.environ.get(name, str(default))
    try:
        return _positive(text)
    except (ValueError, argparse.ArgumentTypeError):
        p.error(f"{name}={text!r}: a whole number of at least 1 is needed")


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    p = parser()
    args = p.parse_args(argv)
    if args.scoring_script is None and args.model is None:
        p.error("give --scoring-script (with --code) or, for a built-in scorer, --model")
    if args.scoring_script is not None and args.code is None:
        p.error("--scoring-script needs --code, the folder that holds it")
    collect = tuple(c for c in args.collect.split(",") if c)
    unknown = set(collect) - {"model_inputs", "model_outputs", "request", "response"}
    if unknown:
        p.error(f"--collect: unknown collection {sorted(unknown)[0]!r}")
    if collect and args.collect_dir is None:
        p.error("--collect needs --collect-dir")
    if not 0.0 <= args.trace_sampling_ratio <= 1.0:
        p.error("--trace-sampling-ratio must be between 0.0 and 1.0")
    if not 0.0 <= args.collect_sampling_rate <= 1.0:
        p.error("--collect-sampling-rate must be between 0.0 and 1.0")
    if not 0 <= args.grpc_port <= 65535:
        p.error(f"--grpc-port {args.grpc_port} is not a port number (0 = no gRPC)")
    max_queue = args.max_concurrent_requests if args.max_queue is None else args.max_queue
    if max_queue < 0:
        p.error("--max-queue must be 0 or more")
    return ServerConfig(
        model=args.model,
        code=args.code,
        scoring_script=args.scoring_script,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_concurrent_requests=args.max_concurrent_requests,
        max_queue=max_queue,
        request_timeout_ms=args.request_timeout_ms,
        max_payload_bytes=args.max_payload_bytes,
        max_batch_size=_from_env(p, args.max_batch_size, "MAX_BATCH_SIZE", 1),
        max_batch_wait_ms=_from_env(
            p, args.max_batch_wait_ms, "MAX_BATCH_WAIT_MS", DEFAULT_BATCH_WAIT_MS
        ),
        log_level=args.log_level,
        log_format=args.log_format,
        listen_fd=args.listen_fd,
        collect_dir=args.collect_dir,
        collect=collect,
        collect_sampling_rate=args.collect_sampling_rate,
        collect_rolling_rate=args.collect_rolling_rate,
        collect_max_bytes=args.collect_max_bytes,
        trace_dir=args.trace_dir,
        trace_otlp_endpoint=args.trace_otlp_endpoint,
        trace_sampling_ratio=args.trace_sampling_ratio,
    )
