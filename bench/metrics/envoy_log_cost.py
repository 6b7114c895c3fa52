"""Envoy's own cost per request for each way of access logging, on static Envoys.

`uv run --no-sync python bench/metrics/envoy_log_cost.py [rounds]` — no xDS, no
platform: one upstream Envoy answering every request itself (`direct_response`), and
one gateway Envoy (`--concurrency 1`) per variant in front of it, the same route and
host metadata as the traffic controller's (`sluice: {endpoint, deployment}`):

- `none`: no access log (the baseline);
- `als`: the gRPC access log (`HttpGrpcAccessLogConfig`) with the three metadata
  custom tags, 256 KiB batches, to a sink running the receiver loop the metrics
  service had (log_sink.py); the platform's until 2026-11-26 14:00;
- `fluentd`: Envoy's fluentd access logger with the platform's record
  (sluice.common.access_log: a line of fields and the request id), 256 KiB batches,
  over TCP to a sink running the metrics service's Forward-protocol code;
- `fluentd, a key per field (before)`: the same logger with the record the platform
  had until 2026-11-26 16:50 (15 keys), to a sink that reads and drops;
- `file`: the platform's record as JSON to /dev/null (what formatting alone costs);
- `otel`: Envoy's OpenTelemetry access logger (OTLP logs over gRPC) with the record's
  line as each log's body and the request id as its one attribute, no built-in labels,
  256 KiB batches, to a sink that reads every body (log_sink.py `otel`);
- `file, text line`: the record's line and request id as a text format to /dev/null
  (what a file access log tailed by the metrics service would cost Envoy).

Two measures (`BENCH_COUNT`):

- `cpu` (default): each round loads all gateways at once, each with its own wrk (-c8,
  5 s), so the other sessions' load hits them alike; per round and variant: Envoy's CPU
  time (user + system) and its sink's, divided by the requests wrk completed, and each
  variant's extra over the same round's baseline. Figures are medians (min-max) over the
  rounds, plus fluentd's extra minus ALS's, round by round.
- `instructions`: each gateway alone under callgrind (started uninstrumented, counters
  zeroed after a 50-request warm-up), the user-space instructions for `BENCH_REQUESTS`
  (400) sequential keep-alive requests, and each variant's extra over `none`. The count
  does not move with the machine's load; it leaves out the kernel (the sends).

Sinks run without TLS (the platform's mutual TLS costs each side once per batch, not
per record).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from sluice.common import access_log
from sluice.common.health import HttpCheck, TcpCheck
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import spread  # bench/stats.py

BEFORE = "fluentd, a key per field (before)"
VARIANTS = ("none", "als", "fluentd", BEFORE, "file", "otel", "file, text line")
SINK_OF = {"als": "als", "fluentd": "fluentd", BEFORE: "drain", "otel": "otel"}  # own sinks
COUNT = os.environ.get("BENCH_COUNT", "cpu")  # or "instructions": callgrind
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))  # per variant under callgrind
# The record until 2026-11-26 16:50: a key per field (Envoy parses each key of the JSON it
# formatted again into msgpack). sluice.common.access_log says why it changed.
PER_FIELD_RECORD = {
    "endpoint": "%UPSTREAM_METADATA(sluice:endpoint)%",
    "deployment": "%UPSTREAM_METADATA(sluice:deployment)%",
    "route_endpoint": "%METADATA(ROUTE:sluice:endpoint)%",
    "start_ms": "%START_TIME(%s%3f)%",
    "us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "in_h": "%REQUEST_HEADERS_BYTES%",
    "in_b": "%BYTES_RECEIVED%",
    "out_h": "%RESPONSE_HEADERS_BYTES%",
    "out_b": "%BYTES_SENT%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "upstream": "%UPSTREAM_HOST%",
}
BUFFER = 256 * 1024
BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})
SINK = Path(__file__).with_name("log_sink.py")
SECONDS = 5


def _socket(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int, *, http2: bool = False, meta: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if meta:  # on the cluster (ALS's tags read it) and the host (the fluentd record's)
        metadata = {"filter_metadata": {"sluice": {"endpoint": "bench", "deployment": "blue"}}}
        cluster["metadata"] = metadata
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = metadata
    return cluster


def _tag(tag: str, kind: str, key: str) -> dict[str, Any]:
    return {
        "tag": tag,
        "metadata": {"kind": {kind: {}}, "metadata_key": {"key": "sluice", "path": [{"key": key}]}},
    }


def _access_log(variant: str) -> list[dict[str, Any]]:
    """The variant's access log, as the traffic controller configured it (ALS, before
    2026-11-26 14:00; fluentd with a key per field, before 16:50) or configures it now."""
    if variant == "none":
        return []
    if variant == "als":
        config: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
            "HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "sluice_gateway",
                "grpc_service": {"envoy_grpc": {"cluster_name": "sink"}},
                "transport_api_version": "V3",
                "buffer_flush_interval": "1s",
                "buffer_size_bytes": BUFFER,
                "custom_tags": [
                    _tag("sluice.endpoint", "cluster", "endpoint"),
                    _tag("sluice.deployment", "cluster", "deployment"),
                    _tag("sluice.route_endpoint", "route", "endpoint"),
                ],
            },
        }
        return [{"name": "envoy.access_loggers.http_grpc", "typed_config": config}]
    if variant in ("fluentd", BEFORE):
        config = {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.fluentd.v3."
            "FluentdAccessLogConfig",
            "cluster": "sink",
            "tag": access_log.TAG,
            "stat_prefix": "sluice",
            "buffer_flush_interval": "1s",
            "buffer_size_bytes": BUFFER,
            "record": access_log.record() if variant == "fluentd" else PER_FIELD_RECORD,
        }
        return [{"name": "envoy.access_loggers.fluentd", "typed_config": config}]
    if variant == "otel":
        record = access_log.record()
        config = {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3."
            "OpenTelemetryAccessLogConfig",
            "common_config": {
                "log_name": "sluice",
                "grpc_service": {"envoy_grpc": {"cluster_name": "sink"}},
                "transport_api_version": "V3",
                "buffer_flush_interval": "1s",
                "buffer_size_bytes": BUFFER,
            },
            "disable_builtin_labels": True,
            "body": {"string_value": record[access_log.TEXT]},
            "attributes": {
                "values": [{"key": "id", "value": {"string_value": record[access_log.REQUEST_ID]}}]
            },
        }
        return [{"name": "envoy.access_loggers.open_telemetry", "typed_config": config}]
    if variant == "file, text line":
        record = access_log.record()
        line = f"{record[access_log.TEXT]} {record[access_log.REQUEST_ID]}\n"
        config = {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null",
            "log_format": {"text_format_source": {"inline_string": line}},
        }
        return [{"name": "envoy.access_loggers.file", "typed_config": config}]
    config = {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": "/dev/null",
        "log_format": {"json_format": access_log.record()},
    }
    return [{"name": "envoy.access_loggers.file", "typed_config": config}]


def _hcm(routes: list[dict[str, Any]], access_log: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gw",
            "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                        "Router"
                    },
                }
            ],
            "access_log": access_log,
        },
    }


def _bootstrap(admin: int, listen: int, routes: list[Any], logs: list[Any], clusters: list[Any]):
    return {
        "admin": {"address": _socket(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "gw",
                    "address": _socket(listen),
                    "filter_chains": [{"filters": [_hcm(routes, logs)]}],
                }
            ],
            "clusters": clusters,
        },
    }


def start_envoy(sup: Supervisor, root: Path, name: str, config: dict[str, Any], admin: int) -> int:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["envoy", "-c", str(path), "--concurrency", "1", "--disable-hot-restart"]
    argv += ["--log-level", "warning"]
    proc = sup.start(
        ProcessSpec(name=name, argv=argv, health=HttpCheck(f"http://127.0.0.1:{admin}/ready"))
    )
    return proc.pid


def wrk(port: int, seconds: int, connections: int) -> subprocess.Popen[str]:
    """wrk against one gateway, started (read its result with `completed`)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    argv = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    argv += ["-s", str(script), f"http://127.0.0.1:{port}/score"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def completed(run: subprocess.Popen[str]) -> int:
    """Requests completed (all 200)."""
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0 and "Non-2xx" not in out, out
    done = re.search(r"(\d+) requests in", out)
    assert done, out
    return int(done.group(1))


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds so far."""
    t = psutil.Process(pid).cpu_times()
    return t.user, t.system


def gateways(sup: Supervisor, root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """The upstream and the sinks, started; each variant's gateway configuration (not
    started) and the sinks' pids."""
    upstream_port, upstream_admin = free_port(), free_port()
    direct = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "[11.0]"}},
        }
    ]
    start_envoy(
        sup,
        root,
        "upstream",
        _bootstrap(upstream_admin, upstream_port, direct, [], []),
        upstream_admin,
    )
    sinks: dict[str, int] = {}
    sink_pids: dict[str, int] = {}
    for kind in sorted(set(SINK_OF.values())):
        port = free_port()
        proc = sup.start(
            ProcessSpec(
                name=f"sink-{kind}",
                argv=[sys.executable, str(SINK), kind, str(port)],
                health=TcpCheck("127.0.0.1", port),
                ports=[port],
            )
        )
        sinks[kind], sink_pids[kind] = port, proc.pid
    route = [
        {
            "match": {"prefix": "/"},
            "route": {"cluster": "dep"},
            "metadata": {"filter_metadata": {"sluice": {"endpoint": "bench"}}},
        }
    ]
    configs = {}
    for variant in VARIANTS:
        clusters = [_cluster("dep", upstream_port, meta=True)]
        if variant in SINK_OF:
            port = sinks[SINK_OF[variant]]
            clusters.append(_cluster("sink", port, http2=variant in ("als", "otel")))
        admin, listen = free_port(), free_port()
        configs[variant] = _bootstrap(admin, listen, route, _access_log(variant), clusters)
    return configs, sink_pids


def _ports(config: dict[str, Any]) -> tuple[int, int]:
    """(admin, listener) of a gateway's configuration."""
    listener = config["static_resources"]["listeners"][0]
    admin = config["admin"]["address"]["socket_address"]["port_value"]
    return admin, listener["address"]["socket_address"]["port_value"]


def cpu_rounds(sup: Supervisor, root: Path, rounds: int) -> None:
    load = os.getloadavg()
    configs, sink_pids = gateways(sup, root)
    ports, pids = {}, {}
    for variant, config in configs.items():
        admin, ports[variant] = _ports(config)
        pids[variant] = start_envoy(sup, root, f"envoy-{len(pids)}", config, admin)
    warm = [wrk(ports[v], 2, 8) for v in VARIANTS]  # warm up
    for run in warm:
        completed(run)
    user: dict[str, list[float]] = {v: [] for v in VARIANTS}
    system: dict[str, list[float]] = {v: [] for v in VARIANTS}
    sink_us: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    extra: dict[str, list[float]] = {v: [] for v in VARIANTS}
    extra_user: dict[str, list[float]] = {v: [] for v in VARIANTS}
    watched = {**pids, **{f"sink-{k}": p for k, p in sink_pids.items()}}
    for _ in range(rounds):
        # All variants at once, each with its own wrk: the other sessions' load hits
        # them alike, so each round's differences compare like with like.
        before = {name: cpu(pid) for name, pid in watched.items()}
        runs = {v: wrk(ports[v], SECONDS, 8) for v in VARIANTS}
        done = {v: completed(run) for v, run in runs.items()}
        time.sleep(1.2)  # the sinks' last batch (Envoy flushes every second)
        after = {name: cpu(pid) for name, pid in watched.items()}
        for v in VARIANTS:
            user[v].append((after[v][0] - before[v][0]) * 1e6 / done[v])
            system[v].append((after[v][1] - before[v][1]) * 1e6 / done[v])
            rps[v].append(done[v] / SECONDS)
            sink = f"sink-{SINK_OF.get(v)}"
            used = sum(after[sink]) - sum(before[sink]) if sink in watched else 0.0
            sink_us[v].append(used * 1e6 / done[v])
        for v in VARIANTS:
            extra[v].append(user[v][-1] + system[v][-1] - user["none"][-1] - system["none"][-1])
            extra_user[v].append(user[v][-1] - user["none"][-1])
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {rounds} rounds of "
        f"{SECONDS} s, the {len(VARIANTS)} gateways loaded at once (wrk -c8 each)"
    )
    print(
        "| variant | Envoy CPU µs/request (user + system) | extra over none, same round "
        "| of which user | sink CPU µs/record | req/s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        total = [a + b for a, b in zip(user[v], system[v], strict=True)]
        sink_cpu = spread(sink_us[v]).show("{:.1f}") if v in SINK_OF else "—"
        print(
            f"| {v} | {spread(total).show('{:.1f}')} "
            f"| {spread(extra[v]).show('{:+.1f}')} "
            f"| {spread(extra_user[v]).show('{:+.1f}')} "
            f"| {sink_cpu} "
            f"| {spread(rps[v]).show('{:,.0f}')} |"
        )
    for other in ("als", BEFORE):
        # per round: fluentd's extra minus the other's
        paired = [a - b for a, b in zip(extra["fluentd"], extra[other], strict=True)]
        cheaper = sum(d < 0 for d in paired)
        print(
            f"fluentd - {other}, Envoy CPU per request, same round: "
            f"{spread(paired).show('{:+.1f}')} µs; fluentd cheaper in {cheaper} of {rounds} rounds"
        )


def instructions(sup: Supervisor, root: Path) -> None:
    """Each variant's gateway alone under callgrind (bench/gateway_cost's method)."""
    gateway_cost = bench_module("gateway_cost")
    callgrind_envoy, callgrind_total = gateway_cost.callgrind_envoy, gateway_cost.callgrind_total
    configs, _ = gateways(sup, root)
    print(f"user-space instructions per request (callgrind), {REQUESTS} sequential requests")
    print("| variant | instructions / request | extra over none |")
    print("|---|---:|---:|")
    none = 0.0
    for i, (variant, config) in enumerate(configs.items()):
        admin, listen = _ports(config)
        path = root / f"cg-{i}.yaml"
        path.write_text(yaml.safe_dump(config))
        out = root / f"callgrind-{i}.out"
        args = ["-c", str(path), "--concurrency", "1", "--disable-hot-restart"]
        args += ["--log-level", "warning"]
        with callgrind_envoy(sup, f"cg-envoy-{i}", args, admin, listen, out) as monitor:
            conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=60)
            send(conn, 50)  # warm-up: connections, the first batches
            time.sleep(1.5)  # and their flush
            monitor("zero")  # counts from here on
            send(conn, REQUESTS)
            time.sleep(1.5)  # the last batch flushed and sent (every second)
            monitor("dump")
            conn.close()
        per = callgrind_total(sorted(root.glob(f"{out.name}.*"))) / REQUESTS  # not the exit's
        none = per if variant == "none" else none
        print(f"| {variant} | {per:,.0f} | {per - none:+,.0f} |", flush=True)


def send(conn: http.client.HTTPConnection, n: int) -> None:
    """`n` scoring requests, one after the other, on one keep-alive connection."""
    for _ in range(n):
        conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"answered {answer.status}")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory(prefix="sluice-bench-logcost-") as tmp:
        root = Path(tmp)
        sup = Supervisor(root / "logs")
        try:
            if COUNT == "instructions":
                instructions(sup, root)
            else:
                cpu_rounds(sup, root, rounds)
        finally:
            sup.stop_all()


if __name__ == "__main__":
    main()
