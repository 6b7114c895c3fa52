"""Scale from zero: the first response of a deployment at zero instances, against the
same deployment warm, through the real gateway.

Starts the whole platform as `sluice up` does (free ports, a temporary state folder;
metrics buckets of 5 s so an idle window passes quickly), deploys the example
scikit-learn model (cached environment: the provisioner's spare process), and gives it
an autoscale setting with minimum 0 and the in-rule "RequestsPerMinute < 1 avg 5s".
Then, `CYCLES` times: wait until it is at zero (the activator listed, no instance
process left), send one request through Envoy and time it. Baseline, same run: `WARM`
requests to the warm deployment. Prints p50 / p90 / max of both and the ratio, with
the machine's load average.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sluice.common.platform import LocalPlatform
from sluice.common.settings import EnvoySettings, ServicePorts, Settings
from sluice.common.supervisor import free_port
from sluice.common.testing.plugin import traversable_dir
from sluice.sdk.autoscale import AutoscaleClient, make_profile, make_rule
from sluice.sdk.client import RegistryClient
from sluice.sdk.invoke import GatewayTarget, send
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.v1 import autoscale_pb2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENDPOINT = "bench-zero"
BODY = b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
CYCLES = int(os.environ.get("BENCH_ZERO_CYCLES", "8"))
WARM = 50


def wait(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def main() -> None:
    os.environ["SLUICE_METRICS_BUCKET_S"] = "5"
    os.environ["SLUICE_METRICS_SNAPSHOT_INTERVAL_S"] = "1"
    with traversable_dir("sluice-bench-zero-") as state_dir:
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
            measure(Settings(state_dir=state.state_dir), state, examples)
        finally:
            for log in state.state_dir.glob("logs/provisioner*"):
                lines = log.read_text(errors="replace").splitlines()
                print("\n".join(ln[:300] for ln in lines if "activation_" in ln))
            platform.down()


def measure(settings: Settings, state: object, examples: Path) -> None:
    online = examples / "online"
    target = GatewayTarget.of_platform(state)  # type: ignore[arg-type]
    with RegistryClient.connect(settings) as client:
        client.create_online_endpoint(
            load_online_endpoint(online / "endpoint.yml", name=ENDPOINT).spec
        )
        spec = load_online_deployment(
            online / "blue-deployment.yml",
            client.upload,
            ["environment=null", "instance_count=1"],
            endpoint_name=ENDPOINT,
        ).spec
        client.create_online_deployment(spec)

        def listed() -> list[str]:
            return [i.id for i in client.get_online_deployment(ENDPOINT, "blue").instances]

        wait(lambda: listed() and all(not i.endswith("-activator") for i in listed()), "blue")
        client.set_traffic(ENDPOINT, {"blue": 100})
        key = client.get_credentials(ENDPOINT).primary_key
        host = f"{ENDPOINT}.{settings.domain}"
        headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]

        def score() -> float:
            started = time.perf_counter()
            status, _, body = send(target, host=host, path="/score", body=BODY, headers=headers)
            elapsed = time.perf_counter() - started
            assert status == 200, (status, body)
            return elapsed

        wait(
            lambda: send(target, host=host, path="/score", body=BODY, headers=headers)[0] == 200,
            "routed",
        )
        warm = [score() for _ in range(WARM)]

        autoscale = AutoscaleClient.connect(settings)
        assert isinstance(autoscale, AutoscaleClient)
        setting = autoscale_pb2.AutoscaleSetting(
            name="bench-zero", endpoint_name=ENDPOINT, deployment_name="blue", enabled=True
        )
        profile = make_profile("default", 1, 0, 1)
        profile.rules.append(
            make_rule(
                "RequestsPerMinute < 1 avg 5s", ("in", "1"), cooldown_min=0, timegrain="avg 5s"
            )
        )
        setting.profiles.append(profile)
        autoscale.create(setting)

        def at_zero() -> bool:
            if listed() != ["blue-activator"]:
                return False
            report = autoscale.costs(ENDPOINT, "blue", since_s=3600)
            return all(line.running_instances == 0 for line in report.lines)

        cold, failed = [], []
        for cycle in range(CYCLES):
            wait(at_zero, f"zero instances ({cycle})")
            started = time.perf_counter()
            status, _, _ = send(target, host=host, path="/score", body=BODY, headers=headers)
            elapsed = time.perf_counter() - started
            print(f"cycle {cycle}: {status} in {elapsed:.3f}s", flush=True)
            (cold if status == 200 else failed).append(elapsed)
        autoscale.close()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 vCPU)")
    print(f"warm (same deployment, through Envoy): {quantiles(warm)}")
    print(f"first response from zero:              {quantiles(cold)}")
    print(f"ratio of medians: {statistics.median(cold) / statistics.median(warm):.0f}x")
    print(f"failed first requests: {len(failed)} of {CYCLES} {[round(f, 2) for f in failed]}")


if __name__ == "__main__":
    main()
