"""The Open Inference Protocol over gRPC against REST v2, both through Envoy, one run.

One inference server (the example sklearn model, one row of 10 values per request,
`--max-concurrent-requests 32`, `--grpc-port`) behind one Envoy configured from the
traffic controller's own snapshot builder (a key endpoint; REST goes to the
deployment's HTTP/1.1 cluster, and so does gRPC ModelInfer, which Envoy's reverse
bridge sends as it is: traffic/xds/grpc_bridge.py). The same load generator,
h2load (nghttp2), sends each request kind, so only the protocol differs:

- `REST v2, HTTP/1.1`: `POST /v2/models/bench/infer`, JSON tensors, h2load `--h1`;
- `REST v2, h2`: the same over h2c to Envoy (Envoy -> server is HTTP/1.1 either way);
- `gRPC`: `inference.GRPCInferenceService/ModelInfer` with `raw_input_contents`, as
  tritonclient sends it (length-prefixed protobuf, `te: trailers`), over h2c;
- `gRPC, grpc.aio, no Envoy`: the same call straight to the instance's own grpc.aio
  server (the other way ModelInfer could go: a direct h2 route to it would cost at least
  this server CPU, plus Envoy's h2 proxying).

Throughput: closed loop, 16 connections of one stream each, SECONDS per round, with
the CPU time Envoy and the server spent per request in those rounds (user + system, from
/proc: a figure the machine's other load disturbs less than requests/s);
latency: one connection, p50/p99 from h2load's per-request log. Rounds alternate the
kinds; medians with the rounds' spread (bench/stats.py). h2load counts an HTTP 200 as
success, and a gRPC error is an HTTP 200 too, so the server's own counter of answered
`/v2/infer` requests (its Prometheus metrics, by status) must match h2load's count.
With 2+ cores the server runs on the last, Envoy and h2load on the first.

Run: `uv run python bench/run.py oip_grpc` (installs h2load with apt-get if missing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from sluice.common.health import HttpCheck
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port
from sluice.testing.envoy_static import static_bootstrap
from sluice.traffic.domain import Deployment, Endpoint, Gateway, KeyAuth, Listen, Share, Upstream
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds.builder import SnapshotBuilder
from sluice.v1 import grpc_predict_v2_pb2 as pb
from sluice.v1 import grpc_predict_v2_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import stats  # bench/stats.py

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
MODEL = ROOT / "examples/online/model-1"
KEY = "bench-primary-key"
DOMAIN = "sluice.localhost"
HOST = f"bench.{DOMAIN}"
ROW = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
ROUNDS = 5
SECONDS = 5
CONNECTIONS = 16
DIRECT = "gRPC, grpc.aio, no Envoy"
KINDS = ("REST v2, HTTP/1.1", "REST v2, h2", "gRPC", DIRECT)


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}_shared", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def ensure_h2load() -> str:
    if shutil.which("h2load") is None and shutil.which("apt-get") is not None:
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "nghttp2-client"],
        ):
            subprocess.run(command, capture_output=True, check=False)
    found = shutil.which("h2load")
    if found is None:
        raise SystemExit("h2load (Debian's nghttp2-client) is needed and apt-get cannot install it")
    return found


def rest_body() -> bytes:
    tensor = {"name": "x", "shape": [1, len(ROW)], "datatype": "FP64", "data": ROW}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_message() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="bench")
    request.inputs.add(name="x", datatype="FP64", shape=[1, len(ROW)])
    request.raw_input_contents.append(struct.pack(f"<{len(ROW)}d", *ROW))
    return request


def grpc_frame() -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, bytes."""
    data = grpc_message().SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def h2load(
    binary: str,
    kind: str,
    port: int,
    data: Path,
    connections: int,
    seconds: int,
    cpus: set[int] | None,
) -> dict[str, float]:
    """One h2load round of `kind`: requests/s, and p50/p99 ms from the per-request log."""
    headers = ["-H", f"authorization: Bearer {KEY}"]
    if kind.startswith("gRPC"):
        url = f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
        headers += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    else:
        url = f"http://127.0.0.1:{port}/v2/models/bench/infer"
        headers += ["-H", "content-type: application/json"]
    headers += ["-H", f":authority: {HOST}"]  # h2load sends it as Host over HTTP/1.1
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    argv = [
        binary, "-c", str(connections), "-m", "1", "-t", "1", "-D", str(seconds),
        "-d", str(data), "--log-file", str(log), *headers, url,
    ]  # fmt: skip
    if kind == "REST v2, HTTP/1.1":
        argv.insert(1, "--h1")
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    assert done and status, out
    if int(done.group(2)) != int(done.group(1)) or int(status.group(1)) != int(done.group(1)):
        raise RuntimeError(f"h2load saw failed requests ({kind}):\n{out}")
    durations = sorted(
        int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line
    )
    log.unlink()
    return {
        "rps": int(done.group(1)) / seconds,
        "p50": durations[len(durations) // 2],
        "p99": durations[min(len(durations) - 1, int(len(durations) * 0.99))],
        "n": float(len(durations)),
    }


def answered(metrics_port: int) -> tuple[float, float]:
    """(answered with 200, answered otherwise) on `/v2/infer`, from the server's metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read()
    ok = failed = 0.0
    for line in text.decode().splitlines():
        if line.startswith("sluice_inference_requests_total{") and 'route="/v2/infer"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if 'status="200"' in line:
                ok += value
            else:
                failed += value
    return ok, failed


def check_answers(envoy_port: int, http_port: int) -> None:
    """Both protocols answer the same prediction through Envoy before anything is timed."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{envoy_port}/v2/models/bench/infer",
        data=rest_body(),
        headers={
            "Host": HOST,
            "Authorization": f"Bearer {KEY}",
            "Content-Type": "application/json",
        },
    )
    answer = urllib.request.urlopen(request, timeout=10).read()  # noqa: S310 - loopback
    rest = json.loads(answer)["outputs"][0]["data"]
    options = [("grpc.default_authority", HOST)]
    with grpc.insecure_channel(f"127.0.0.1:{envoy_port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = stub.ModelInfer(
                    grpc_message(), metadata=[("authorization", f"Bearer {KEY}")], timeout=10
                )
                break
            except grpc.RpcError as error:  # the twin cluster's first health check
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    (value,) = struct.unpack("<d", reply.raw_output_contents[0])
    if abs(value - rest[0]) > 1e-9:
        raise RuntimeError(f"gRPC answered {value}, REST {rest[0]}")
    print(f"both answer {value:.4f} through Envoy (server on port {http_port})")


def main() -> None:
    traffic = _load("traffic/run")
    binary = ensure_h2load()
    if not (MODEL / "model").exists():
        subprocess.run([sys.executable, str(ROOT / "examples/train_models.py")], check=True)
    available = stats.cores()
    server_cpus = {available[-1]} if len(available) >= 2 else None
    client_cpus = {available[0]} if len(available) >= 2 else None
    print(stats.machine())
    with tempfile.TemporaryDirectory(prefix="sluice-bench-oip-grpc-") as tmp:
        root = Path(tmp)
        sup = Supervisor(root / "logs")
        try:
            port, grpc_port, metrics_port = free_port(), free_port(), free_port()
            argv = [
                *traffic.inference_argv(port),
                *("--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)),
            ]
            server = sup.start(
                ProcessSpec(
                    name="inference",
                    argv=argv,
                    health=HttpCheck(f"http://127.0.0.1:{port}/ready"),
                    ports=[port, grpc_port],
                    start_timeout_s=60,
                    env={
                        **os.environ,
                        "AZUREML_ENDPOINT_NAME": "bench",
                        "AZUREML_DEPLOYMENT_NAME": "blue",
                    },
                )
            )
            envoy_port = free_port()
            cert, key = ensure_local_certificate(root / "tls", DOMAIN)
            gateway = Gateway(
                domain=DOMAIN,
                https=Listen("127.0.0.1", free_port()),
                http=Listen("127.0.0.1", envoy_port),
                tls=load_material(cert, key),
                jwks=PLACEHOLDER_JWKS,
            )
            upstream = Upstream("127.0.0.1", port)
            deployment = Deployment("bench", "blue", 1, 5000, 32, (upstream,))
            endpoint = Endpoint(
                name="bench",
                version=1,
                auth=KeyAuth((KEY, "bench-secondary")),
                traffic=(Share("blue", 100),),
                mirror=None,
                deployments=(deployment,),
            )
            snapshot = SnapshotBuilder().build(gateway, [endpoint])
            snapshot.check()
            admin = free_port()
            config = root / "envoy.json"
            config.write_text(json.dumps(static_bootstrap(snapshot, admin_port=admin)))
            envoy = sup.start(
                ProcessSpec(
                    name="envoy",
                    argv=[
                        *("envoy", "-c", str(config), "--concurrency", "1"),
                        *("--disable-hot-restart", "--log-level", "warning"),
                    ],
                    health=HttpCheck(f"http://127.0.0.1:{admin}/ready"),
                    ports=[admin, envoy_port],
                )
            )
            if server_cpus and client_cpus:
                for pid in [server.pid, *_children(server.pid)]:
                    traffic.pin(pid, server_cpus)
                traffic.pin(envoy.pid, client_cpus)
            check_answers(envoy_port, port)
            data = {"REST": root / "rest.json", "gRPC": root / "grpc.bin"}
            data["REST"].write_bytes(rest_body())
            data["gRPC"].write_bytes(grpc_frame())

            def body(kind: str) -> Path:
                return data["gRPC" if kind.startswith("gRPC") else "REST"]

            def port_of(kind: str) -> int:
                return grpc_port if kind == DIRECT else envoy_port

            before = answered(metrics_port)
            sent = 0.0
            for kind in KINDS:  # warm up
                sent += h2load(binary, kind, port_of(kind), body(kind), 8, 2, client_cpus)["n"]
            thr: dict[str, list[float]] = {k: [] for k in KINDS}
            cpu: dict[str, dict[str, float]] = {k: {"envoy": 0.0, "server": 0.0} for k in KINDS}
            answered_by: dict[str, float] = dict.fromkeys(KINDS, 0.0)
            p50: dict[str, list[float]] = {k: [] for k in KINDS}
            p99: dict[str, list[float]] = {k: [] for k in KINDS}
            for _ in range(ROUNDS):
                for kind in KINDS:
                    before_cpu = {"envoy": _cpu_s(envoy.pid), "server": _cpu_s(server.pid)}
                    loaded = h2load(
                        binary, kind, port_of(kind), body(kind), CONNECTIONS, SECONDS, client_cpus
                    )
                    cpu[kind]["envoy"] += _cpu_s(envoy.pid) - before_cpu["envoy"]
                    cpu[kind]["server"] += _cpu_s(server.pid) - before_cpu["server"]
                    answered_by[kind] += loaded["n"]
                    single = h2load(binary, kind, port_of(kind), body(kind), 1, 3, client_cpus)
                    thr[kind].append(loaded["rps"])
                    p50[kind].append(single["p50"])
                    p99[kind].append(single["p99"])
                    sent += loaded["n"] + single["n"]
            ok, failed = answered(metrics_port)
            # h2load leaves the requests in flight at a round's end uncounted: the server may
            # have answered a few more than h2load saw, never fewer, and none with an error.
            if failed or ok - before[0] < sent:
                raise RuntimeError(
                    f"h2load counted {sent:.0f} answers; the server {ok - before[0]:.0f} with "
                    f"200 and {failed:.0f} others"
                )
            print(f"all {sent:.0f} answers h2load counted were 200s of the server's /v2/infer")
            print(
                f"| through Envoy | req/s, c={CONNECTIONS} | p50 ms, c=1 | p99 ms, c=1 | "
                f"req/s vs REST v2 h2 |"
            )
            print("|---|---:|---:|---:|---:|")
            base = stats.spread(thr["REST v2, h2"]).median
            for kind in KINDS:
                rps = stats.spread(thr[kind])
                print(
                    f"| {kind} | {rps.show('{:,.0f}')} | {stats.spread(p50[kind]).show()} | "
                    f"{stats.spread(p99[kind]).show()} | x{rps.median / base:.2f} |"
                )
            print("| CPU per request, c=16 rounds | Envoy µs | server µs | total µs |")
            print("|---|---:|---:|---:|")
            for kind in KINDS:
                envoy_us = cpu[kind]["envoy"] / answered_by[kind] * 1e6
                server_us = cpu[kind]["server"] / answered_by[kind] * 1e6
                print(f"| {kind} | {envoy_us:.0f} | {server_us:.0f} | {envoy_us + server_us:.0f} |")
            ratios = [g / r for g, r in zip(thr["gRPC"], thr["REST v2, h2"], strict=True)]
            print(f"per-round gRPC / REST v2 h2 throughput: {[round(r, 2) for r in ratios]}")
            print(stats.machine())
        finally:
            sup.stop_all()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children (the server's workers)."""
    import psutil

    total = 0.0
    try:
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


if __name__ == "__main__":
    main()
