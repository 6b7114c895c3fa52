"""Autoscaling's two latency targets (issue 15), each against a baseline from the same run,
through the real gateway, on the whole platform as `sluice up` starts it (free ports, a
temporary state folder), with the example scikit-learn model in a cached environment
(the provisioner's spare process).

1. **First response from zero** (target p50 <= 1.5 s, p99 <= 3 s): a deployment with
   `scale_settings.min_instances: 0` (the provisioner's idle path, idle period
   `SLUICE_SCALE_TO_ZERO_IDLE_S=1` and a 1 s liveness period, so a cycle takes seconds),
   `WAKEUPS` times: wait until it is at zero (only the activator listed and no instance
   process left, as costs see it), time one request through Envoy's HTTPS listener, then
   time a second one right after it: the **warm baseline**, same deployment, same client,
   same conditions (a new TLS connection each).
2. **Decision -> new instance serving** (target <= 2 s): `ROUNDS` times, an autoscale
   setting's decision 1 -> 2 (its profile's bounds raised, decided by the metrics service's
   next evaluation) on deployment `auto`; the time from the decision's `autoscale.scaled`
   event to the first `traffic.applied` event whose `routed` lists the new instance's
   address (every Envoy ACKed a configuration balancing over it). **Baseline**, interleaved
   in the same rounds: the same 1 -> 2 made by hand (`instance_count` through the
   registry) on deployment `manual`, from its `deployment.updated` event to the same
   `traffic.applied`. Both go back to 1 (and their second process exits) before the next
   round. Event times are the services' own clocks on this one machine.

Prints p50 / p90 / p99 / max, the ratios and the load average before and after.
`BENCH_WAKEUPS` and `BENCH_ROUNDS` change the counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psutil

from sluice.common.platform import LocalPlatform, PlatformState
from sluice.common.settings import EnvoySettings, ServicePorts, Settings
from sluice.common.supervisor import free_port
from sluice.sdk.autoscale import AutoscaleClient, make_profile
from sluice.sdk.client import RegistryClient
from sluice.sdk.invoke import GatewayTarget, send
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.plugin import traversable_dir
from sluice.v1 import autoscale_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
WAKEUPS = int(os.environ.get("BENCH_WAKEUPS", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))


def wait(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
    return found


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] * 1000

    return (
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, p90 {q(0.9):.0f} ms, "
        f"p99 {q(0.99):.0f} ms, max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


class Events:
    """Every platform event as it is published (core NATS, in a thread of its own):
    (type, CloudEvents time as epoch seconds, data)."""

    def __init__(self, nats_url: str, prefix: str):
        self._url, self._prefix = nats_url, prefix
        self.seen: list[tuple[str, float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(timeout=30)

    async def _subscribe(self) -> None:
        from datetime import datetime

        conn = self._conn = await nats.connect(self._url)

        async def on(msg: Any) -> None:
            body = json.loads(msg.data)
            when = datetime.fromisoformat(body["time"]).timestamp()
            with self._lock:
                self.seen.append((body["type"].removeprefix("sluice."), when, body["data"]))

        await conn.subscribe(f"{self._prefix}.>", cb=on)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._conn.close(), self._loop).result(timeout=10)

    def find(self, kind: str, test: Callable[[dict[str, Any]], bool], after: float) -> Any:
        with self._lock:
            for type_, when, data in self.seen:
                if type_ == kind and when >= after and test(data):
                    return when, data
        return None


def main() -> None:
    os.environ["SLUICE_METRICS_BUCKET_S"] = "5"
    os.environ["SLUICE_METRICS_SNAPSHOT_INTERVAL_S"] = "1"
    os.environ["SLUICE_SCALE_TO_ZERO_IDLE_S"] = "1"
    with traversable_dir("sluice-bench-autoscale-") as state_dir:
        examples = state_dir / "examples"
        shutil.copytree(EXAMPLES, examples)
        subprocess.run(
            [sys.executable, str(examples / "train_models.py")],
            check=True,
            capture_output=True,
            timeout=300,
        )
        settings = Settings(
            state_dir=state_dir / "state",
            envoy=EnvoySettings(http_port=free_port(), https_port=free_port()),
            ports=ServicePorts(registry=free_port()),
        )
        platform = LocalPlatform(settings)
        state, _ = platform.up()
        try:
            Bench(Settings(state_dir=state.state_dir), state, examples / "online").run()
        finally:
            if os.environ.get("BENCH_LOGS"):  # the provisioner's log, to see where time goes
                for log in state.state_dir.glob("logs/provisioner*"):
                    shutil.copy(log, Path(os.environ["BENCH_LOGS"]) / log.name)
            platform.down()


class Bench:
    def __init__(self, settings: Settings, state: PlatformState, online: Path):
        self.settings, self.online = settings, online
        self.target = GatewayTarget.of_platform(state)
        self.client = RegistryClient.connect(settings)
        autoscale = AutoscaleClient.connect(settings)
        assert isinstance(autoscale, AutoscaleClient)
        self.autoscale = autoscale
        self.events = Events(state.nats_url, settings.events_subject_prefix)
        self.ready_only: tuple[list[float], list[float]] = ([], [])
        self.provisioner = next(p.pid for p in state.processes if p.name == "provisioner")

    def spare_warm(self) -> bool:
        """The provisioner's spare process has finished its imports (it waits on its stdin
        without using CPU): "a cached environment", what the targets assume. A wake-up
        every few seconds would otherwise often find it still importing. (A spare that
        became an instance keeps its command line, but listens on its port.)"""
        for child in psutil.Process(self.provisioner).children():
            try:
                if "sluice.provisioner.spare" not in " ".join(child.cmdline()):
                    continue
                if any(c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")):
                    continue  # an instance
                before = sum(child.cpu_times()[:2])
                time.sleep(0.2)
                if sum(child.cpu_times()[:2]) == before and child.status() == "sleeping":
                    return True
            except psutil.Error:
                continue
        return False

    def run(self) -> None:
        print(f"load average at start {load()} (2 vCPU)", flush=True)
        started = time.monotonic()
        cold, warm, failed = self.wakeups()
        wake_s = time.monotonic() - started
        print(f"load average after the wake-ups {load()}", flush=True)
        started = time.monotonic()
        auto, manual = self.scale_out()
        print(f"load average at the end {load()}", flush=True)
        print(f"\n1. scale from zero ({wake_s:.0f} s)")
        print(f"   warm, the request right after (baseline): {quantiles(warm)}")
        print(f"   first response from zero:                 {quantiles(cold)}")
        print(
            f"   ratio p50 {statistics.median(cold) / statistics.median(warm):.1f}x; "
            f"failed first requests: {len(failed)} of {WAKEUPS}"
        )
        print(f"\n2. -> new instance serving ({time.monotonic() - started:.0f} s)")
        print(f"   instance_count by hand (baseline): {quantiles(manual)}")
        print(f"   autoscale decision:                {quantiles(auto)}")
        print(f"   ratio p50 {statistics.median(auto) / statistics.median(manual):.2f}x")
        auto_ready, manual_ready = self.ready_only
        print(f"   of which to instance.ready: by hand {quantiles(manual_ready)}")
        print(f"                               decision {quantiles(auto_ready)}")
        self.autoscale.close()
        self.client.close()
        self.events.close()

    def deploy(self, endpoint: str, name: str, sets: list[str]) -> None:
        spec = load_online_deployment(
            self.online / "blue-deployment.yml",
            self.client.upload,
            ["environment=null", *sets],
            name=name,
            endpoint_name=endpoint,
        ).spec
        self.client.create_online_deployment(spec)

    def listed(self, endpoint: str, name: str) -> list[Any]:
        return list(self.client.get_online_deployment(endpoint, name).instances)

    def scorer(self, endpoint: str) -> Callable[[], tuple[int, float]]:
        key = self.client.get_credentials(endpoint).primary_key
        host = f"{endpoint}.{self.settings.domain}"
        headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]

        def score() -> tuple[int, float]:
            started = time.perf_counter()
            status, _, _ = send(self.target, host=host, path="/score", body=BODY, headers=headers)
            return status, time.perf_counter() - started

        return score

    def running(self, endpoint: str, name: str) -> int:
        """Instance processes that run (the provisioner's instance history, as costs read it)."""
        report = self.autoscale.costs(endpoint, name, since_s=3600)
        return sum(line.running_instances for line in report.lines)

    # ---- 1. scale from zero ----------------------------------------------------------------

    def wakeups(self) -> tuple[list[float], list[float], list[float]]:
        endpoint = "bench-zero"
        self.client.create_online_endpoint(
            load_online_endpoint(self.online / "endpoint.yml", name=endpoint).spec
        )
        self.deploy(
            endpoint,
            "blue",
            [
                "instance_count=1",
                "scale_settings.min_instances=0",
                "liveness_probe.initial_delay=1",
                "liveness_probe.period=1",
            ],
        )
        wait(lambda: self.listed(endpoint, "blue"), "blue to start", timeout=300)
        self.client.set_traffic(endpoint, {"blue": 100})
        score = self.scorer(endpoint)
        cold: list[float] = []
        warm: list[float] = []
        failed: list[float] = []

        def at_zero() -> bool:
            ids = [i.id for i in self.listed(endpoint, "blue")]
            return ids == ["blue-activator"] and self.running(endpoint, "blue") == 0

        for cycle in range(WAKEUPS):
            wait(at_zero, f"zero instances ({cycle})")
            wait(self.spare_warm, "a warm spare process")
            status, elapsed = score()
            (cold if status == 200 else failed).append(elapsed)
            status, again = score()
            assert status == 200, status
            warm.append(again)
            if cycle % 10 == 0:
                print(f"wake-up {cycle}: {elapsed:.3f} s, then {again:.3f} s", flush=True)
        return cold, warm, failed

    # ---- 2. decision -> new instance serving ------------------------------------------------

    def scale_out(self) -> tuple[list[float], list[float]]:
        endpoint = "bench-scale"
        self.client.create_online_endpoint(
            load_online_endpoint(self.online / "endpoint.yml", name=endpoint).spec
        )
        for name in ("auto", "manual"):
            self.deploy(endpoint, name, ["instance_count=1"])
        for name in ("auto", "manual"):
            wait(lambda n=name: self.ready(endpoint, n, 1), f"{name} to serve", timeout=300)
        setting = autoscale_pb2.AutoscaleSetting(
            name="bench-auto", endpoint_name=endpoint, deployment_name="auto", enabled=True
        )
        setting.profiles.append(make_profile("default", 1, 1, 1))
        self.autoscale.create(setting)
        auto: list[tuple[float, float]] = []
        manual: list[tuple[float, float]] = []
        for round_ in range(ROUNDS):
            order = [self.by_setting, self.by_hand]
            for step in order if round_ % 2 == 0 else order[::-1]:
                wait(self.spare_warm, "a warm spare process")
                (auto if step == self.by_setting else manual).append(step(endpoint))
            print(
                f"round {round_}: auto {auto[-1][1]:.2f} s (ready after {auto[-1][0]:.2f} s), "
                f"manual {manual[-1][1]:.2f} s (ready after {manual[-1][0]:.2f} s)",
                flush=True,
            )
        self.ready_only = ([a[0] for a in auto], [m[0] for m in manual])
        return [a[1] for a in auto], [m[1] for m in manual]

    def ready(self, endpoint: str, name: str, count: int) -> bool:
        listed = self.listed(endpoint, name)
        return len(listed) == count and all(i.ready for i in listed)

    def by_setting(self, endpoint: str) -> float:
        return self._step(endpoint, "auto", self._set_bounds)

    def by_hand(self, endpoint: str) -> float:
        return self._step(endpoint, "manual", self._set_count)

    def _set_bounds(self, endpoint: str, name: str, count: int) -> float:
        """A setting whose bounds are `count`: the next evaluation decides it."""
        since = time.time() - 0.001
        setting = self.autoscale.get("bench-auto")
        profile = setting.profiles[0]
        profile.min_count = profile.default_count = profile.max_count = count
        self.autoscale.update(setting)
        when, _ = wait(
            lambda: self.events.find(
                "autoscale.scaled",
                lambda d: d["deployment"] == name and d["new_count"] == count,
                since,
            ),
            "the decision",
        )
        return float(when)

    def _set_count(self, endpoint: str, name: str, count: int) -> float:
        since = time.time() - 0.001
        spec = self.client.get_online_deployment(endpoint, name).spec
        self.client.update_online_deployment(spec.model_copy(update={"instance_count": count}))
        when, _ = wait(
            lambda: self.events.find("deployment.updated", lambda d: d["name"] == name, since),
            "deployment.updated",
        )
        return float(when)

    def _step(
        self, endpoint: str, name: str, scale: Callable[[str, str, int], float]
    ) -> tuple[float, float]:
        """1 -> 2 instances: seconds from the trigger's event to the new instance's
        `instance.ready`, and to Envoy routing it; then back to 1 with the second process
        gone."""
        before = {i.address for i in self.listed(endpoint, name)}
        decided = scale(endpoint, name, 2)
        key = f"{endpoint}/{name}"
        ready, _ = wait(
            lambda: self.events.find(
                "instance.ready",
                lambda d: d["name"] == name and d["address"] not in before,
                decided,
            ),
            f"{name}'s new instance ready",
        )
        applied, _ = wait(
            lambda: self.events.find(
                "traffic.applied",
                lambda d: len(set(d.get("routed", {}).get(key, [])) - before) > 0,
                decided,
            ),
            f"{name}'s new instance routed",
        )
        scale(endpoint, name, 1)
        wait(
            lambda: self.ready(endpoint, name, 1) and self.running(endpoint, name) == 1,
            f"{name} back to one instance",
        )
        return float(ready) - decided, float(applied) - decided


if __name__ == "__main__":
    main()
