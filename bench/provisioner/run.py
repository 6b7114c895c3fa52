"""How fast a deployment serves: create -> Succeeded, recovery, cold environment build.

Starts real nats-server, SecantusDB, the registry and the provisioner, trains
the example sklearn model, then measures through the registry API:

- warm: create -> `Succeeded` with the environment already built;
- baseline, same run, interleaved with warm round by round: a cold
  `python -m sluice.inference` start of the same model and script until /ready
  (what every instance would cost without the provisioner's pre-started spares);
- recovery: SIGKILL an instance -> a replacement is ready;
- cold: create -> `Succeeded` with a new environment (virtualenv built by uv,
  package cache warm), once: a second new environment would be a different one;
- recovery of that deployment, whose environment holds a deployer's packages: as root
  its instances cannot start from the shared spare (a root process must not import a
  deployer's packages); they start from a spare of the deployment's own, started as its
  user (provisioner/spares.py).

Warm, baseline and recovery run BENCH_ROUNDS rounds (default 5); figures are median
(min-max) over rounds, the ratio warm / cold start taken round by round.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

from sluice.common.resources import EnvironmentSpec, OnlineDeployment, ProvisioningState
from sluice.common.supervisor import free_port
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.stack import servers, start_services

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stats import interleave, ratios, rounds, spread  # bench/stats.py

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TERMINAL = {ProvisioningState.succeeded, ProvisioningState.failed}
ROUNDS = rounds(5)


def wait(condition: Callable[[], object], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def settled(client: RegistryClient, name: str) -> OnlineDeployment | None:
    doc = client.get_online_deployment("bench-endpoint", name)
    return doc if doc.meta.provisioning_state in TERMINAL else None


def create_and_wait(client: RegistryClient, name: str, env: EnvironmentSpec) -> float:
    spec = load_online_deployment(
        EXAMPLES / "online/blue-deployment.yml",
        client.upload,
        ["environment=null"],
        name=name,
        endpoint_name="bench-endpoint",
    ).spec.model_copy(update={"environment": env})
    started = time.perf_counter()
    client.create_online_deployment(spec)
    wait(lambda: settled(client, name))
    elapsed = time.perf_counter() - started
    doc = settled(client, name)
    assert doc is not None and doc.meta.provisioning_state is ProvisioningState.succeeded, doc
    return elapsed


def cold_start_baseline() -> float:
    port = free_port()
    model = EXAMPLES / "online/model-1/model"
    code = EXAMPLES / "online/model-1/onlinescoring"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.inference", "--model", str(model), "--code", str(code),
         "--scoring-script", "score.py", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait(ready)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()


def recovery(client: RegistryClient, name: str) -> float:
    (inst,) = client.get_online_deployment("bench-endpoint", name).instances
    port = int(inst.address.split(":")[1])
    pid = next(
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    )
    started = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    wait(
        lambda: any(
            i.ready and i.id != inst.id
            for i in client.get_online_deployment("bench-endpoint", name).instances
        )
    )
    return time.perf_counter() - started


def main() -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "train_models.py")], check=True)
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        servers(Path(tmp)) as (sup, settings),
    ):
        # Deployments run as users of their own, who must be able to traverse to their workspace.
        Path(tmp).chmod(0o711)
        settings = start_services(sup, settings, ["registry", "provisioner"])
        with RegistryClient(f"127.0.0.1:{settings.ports.registry}", "bench") as client:
            endpoint = load_online_endpoint(EXAMPLES / "online/endpoint.yml", name="bench-endpoint")
            client.create_online_endpoint(endpoint.spec)
            names = (f"warm-{i}" for i in range(ROUNDS))

            def warm() -> float:
                seconds = create_and_wait(client, next(names), EnvironmentSpec())
                time.sleep(1.0)  # let the next spare finish importing, as between user actions
                return seconds

            runs = interleave(ROUNDS, {"baseline": cold_start_baseline, "warm": warm})
            recoveries = []
            for _ in range(ROUNDS):
                recoveries.append(recovery(client, "warm-0"))
                time.sleep(1.0)
            cold = create_and_wait(
                client,
                "cold-env",
                EnvironmentSpec(pip_requirements=("joblib", "tabulate==0.9.0")),
            )
            own_env = []
            for _ in range(ROUNDS):
                time.sleep(1.0)
                own_env.append(recovery(client, "cold-env"))
    print(f"| measure, seconds | median (min-max) of {ROUNDS} rounds |")
    print("|---|---:|")
    print(
        f"| cold inference-server start to /ready (baseline) | {spread(runs['baseline']).show()} |"
    )
    print(f"| create -> Succeeded, cached env | {spread(runs['warm']).show()} |")
    print(f"| kill -9 -> replacement ready | {spread(recoveries).show()} |")
    print(f"| create -> Succeeded, new environment (cold, one run) | {cold:.2f} |")
    who = "root: the deployment's own spare" if os.geteuid() == 0 else "the shared spare"
    print(f"| kill -9 -> replacement ready, that environment ({who}) | {spread(own_env).show()} |")
    ratio = spread(ratios(runs["warm"], runs["baseline"]))
    print(f"ratio create / cold start, per round: {ratio.show()}")


if __name__ == "__main__":
    main()
