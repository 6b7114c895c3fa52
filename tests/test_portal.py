"""The portal in a real headless Chromium (Debian's `chromium`, driven by Playwright over
CDP; no browser download), against the shared local platform.

One module-scoped world: an endpoint with blue (100%) and green (0%) deployments created
by the CLI, one browser page signed in. Screenshots go to test-artifacts/screenshots/
(gitignored) for a reviewer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice.common.platform import PlatformState
from sluice.sdk.invoke import GatewayTarget, send
from sluice.testing.plugin import traversable_dir
from sluice.testing.rest import Rest, rest_of
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration

# A batch scoring script that holds each mini-batch until the test creates the GATE file.
BATCH_SCRIPT = """\
import os
import re
import time


def init():
    pass


def run(mini_batch):
    while not os.path.exists(os.environ["GATE"]):
        time.sleep(0.05)
    return [f"{os.path.basename(path)} scored" for path in mini_batch]
"""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (`apt-get install -y chromium`; `make setup` "
        "installs it as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class World:
    platform: PlatformState
    rest: Rest
    endpoint: str
    page: Any
    errors: list[str]

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def served_by(self, n: int = 10) -> set[str]:
        key = self.rest.call("POST", f"/onlineEndpoints/{self.endpoint}/listKeys")[1]["primaryKey"]
        assert self.platform.envoy_http_port
        target = GatewayTarget("127.0.0.1", self.platform.envoy_http_port, tls=False)
        seen = set()
        for _ in range(n):
            status, headers, body = send(
                target,
                host="localhost",
                path=f"/endpoints/{self.endpoint}/score",
                body=b'{"data": [[1,2,3,4,5,6,7,8,9,10]]}',
                headers=[("Authorization", f"Bearer {key}")],
                timeout_s=30,
            )
            assert status == 200, body
            seen.add(dict((k.lower(), v) for k, v in headers)["azureml-model-deployment"])
        return seen


def cli(platform: PlatformState, cwd: Path, *args: str) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_STATE_DIR": str(platform.state_dir),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "sluice.sdk.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def world(local_platform: PlatformState, trained_models: Path) -> Iterator[World]:
    rest = rest_of(local_platform)
    endpoint = f"portal-{os.getpid()}"
    online = trained_models / "online"
    cli(local_platform, online, "online-endpoint", "create", "-n", endpoint)
    cli(local_platform, online, "online-deployment", "create", "-f", "blue-deployment.yml",
        "-e", endpoint, "--all-traffic")  # fmt: skip
    cli(local_platform, online, "online-deployment", "create", "-f", "green-deployment.yml",
        "-e", endpoint)  # fmt: skip
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.set_default_timeout(30_000)
        # expect() has its own default (5 s), too short for a page polling a busy machine.
        sync_api.expect.set_options(timeout=30_000)
        yield World(local_platform, rest, endpoint, page, errors)
        browser.close()
    rest.call("DELETE", f"/onlineEndpoints/{endpoint}")


def test_sign_in_and_see_the_endpoint_the_cli_created(world: World) -> None:
    page = world.page
    assert world.platform.management_url
    page.goto(world.platform.management_url + "/portal/")
    page.get_by_label("Admin token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#sign-in-error")).to_contain_text("Sign-in failed")
    world.errors.clear()  # the browser logs the refused call (401) as a console error
    page.get_by_label("Admin token").fill(world.rest.admin_token)
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#sign-in")).to_be_hidden()
    row = page.locator("#endpoints tr", has_text=world.endpoint)
    sync_api.expect(row).to_contain_text("blue 100%")
    sync_api.expect(row).to_contain_text(f"/endpoints/{world.endpoint}/score")
    world.shot("endpoints")
    assert world.errors == []


def test_slider_moves_traffic_and_envoy_serves_it(world: World) -> None:
    page = world.page
    page.goto(f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}")
    blue = page.get_by_role("slider", name="blue")
    green = page.get_by_role("slider", name="green")
    sync_api.expect(blue).to_have_value("100")
    blue.focus()
    page.keyboard.press("Home")  # the keyboard: blue 0, so green takes the rest
    sync_api.expect(blue).to_have_value("0")
    sync_api.expect(green).to_have_value("100")
    page.get_by_role("button", name="Apply traffic").click()
    status = page.locator("#traffic-status")
    sync_api.expect(status).to_contain_text("applied: Envoy serves green 100%")
    world.shot("endpoint-traffic")
    assert world.served_by() == {"green"}
    assert world.errors == []


def test_send_a_test_request(world: World) -> None:
    page = world.page
    page.goto(f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}/test")
    page.get_by_label("Deployment", exact=True).select_option("blue")
    page.get_by_role("button", name="Send").click()
    sync_api.expect(page.locator("#test-status")).to_contain_text("200 in")
    sync_api.expect(page.locator("#test-status")).to_contain_text("answered by blue")
    answer = page.locator("#test-answer").inner_text()
    assert answer.startswith("[") and any(ch.isdigit() for ch in answer), answer
    world.shot("endpoint-test")
    assert world.errors == []


def test_read_a_deployments_logs(world: World) -> None:
    page = world.page
    page.goto(f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}/logs")
    page.get_by_label("Deployment", exact=True).select_option("green")
    page.get_by_role("button", name="Get logs").click()
    sync_api.expect(page.locator("#logs-status")).to_contain_text("instance")
    assert page.locator("#logs-text").inner_text().strip() not in ("", "(empty)")
    world.shot("endpoint-logs")
    assert world.errors == []


def test_metrics_chart_renders_with_data(world: World) -> None:
    page = world.page
    url = f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}/metrics"
    chart = page.locator("figure[data-chart='Requests per minute'] polyline")

    def drawn() -> bool:
        page.goto(url)
        page.reload()
        page.locator("#costs table, #costs [role=alert], #costs [role=status]").wait_for()
        return chart.count() > 0

    wait_for(drawn, "the requests chart has points (Envoy's access log -> metrics)", 90)
    assert page.locator("figure[data-chart='Requests per minute'] circle").count() >= 1
    sync_api.expect(page.locator("#costs table")).to_contain_text("blue")
    world.shot("endpoint-metrics")
    assert world.errors == []


def test_readable_at_phone_width(world: World) -> None:
    page = world.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.goto(f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}")
        sync_api.expect(page.get_by_role("slider", name="green")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        world.shot("endpoint-phone")
        page.goto(f"{world.platform.management_url}/portal/#/jobs")
        page.locator("#jobs table, #jobs [role=status], #jobs [role=alert]").first.wait_for()
        world.shot("jobs-phone")
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})
    assert world.errors == []


@pytest.mark.timeout(300)  # a batch deployment and a job on a busy machine
def test_job_page_follows_a_real_batch_job(world: World, tmp_path: Path) -> None:
    """A batch job invoked through the platform, held running by a gate: its page shows it
    running at 0 of 3 mini-batches, then (polling on its own) completed at 3 of 3, where
    its output went, and the workers' log lines."""
    page = world.page
    endpoint = f"portal-batch-{os.getpid()}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(BATCH_SCRIPT)
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"part{i}.txt").write_text(f"{i}\n")
    with traversable_dir("sluice-gates-") as gates:  # the workers' own user reaches it
        gate = gates / "gate"
        (tmp_path / "endpoint.yml").write_text(f"name: {endpoint}\n")
        (tmp_path / "deployment.yml").write_text(
            f"name: score\nendpoint_name: {endpoint}\ntype: model\n"
            "code_configuration: {code: code/, scoring_script: score.py}\n"
            "resources: {instance_count: 1}\n"
            "settings:\n  mini_batch_size: 1\n  max_concurrency_per_instance: 1\n"
            f"  environment_variables: {{GATE: '{gate}'}}\n"
        )
        cli(world.platform, tmp_path, "batch-endpoint", "create", "-f", "endpoint.yml")
        cli(world.platform, tmp_path, "batch-deployment", "create", "-f", "deployment.yml",
            "--set-default")  # fmt: skip
        invoked = cli(world.platform, tmp_path, "batch-endpoint", "invoke", "-n", endpoint,
                      "--input", "data", "-o", "json")  # fmt: skip
        job = json.loads(invoked)["name"]
        page.goto(f"{world.platform.management_url}/portal/")  # signed in, whatever ran before
        page.evaluate(
            "t => sessionStorage.setItem('sluice-admin-token', t)", world.rest.admin_token
        )
        page.goto(f"{world.platform.management_url}/portal/#/jobs/{job}")
        summary = page.locator("#job")
        try:
            sync_api.expect(summary).to_contain_text("Running", timeout=60_000)
        except AssertionError as exc:  # say what the page and the runner showed instead
            raise AssertionError(
                f"{exc}\npage: {page.locator('#view').inner_text()!r}\n"
                f"browser errors: {world.errors}\nREST: {world.rest.call('GET', f'/jobs/{job}')}"
            ) from exc
        sync_api.expect(summary).to_contain_text("0/3 mini-batches")
        world.shot("job-running")
        gate.touch()
        sync_api.expect(summary).to_contain_text("Completed", timeout=120_000)
    sync_api.expect(summary).to_contain_text("3/3 mini-batches")
    sync_api.expect(summary).to_contain_text("predictions.csv")
    sync_api.expect(summary).to_contain_text(f"{endpoint} / score")
    sync_api.expect(page.locator("#job-log")).to_contain_text("worker-")
    world.shot("job-completed")
    page.goto(f"{world.platform.management_url}/portal/#/jobs")
    sync_api.expect(page.locator("#jobs tr", has_text=job)).to_contain_text("Completed")
    status, resource = world.rest.call("GET", f"/jobs/{job}")  # what the page read
    assert status == 200 and resource["properties"]["status"] == "Completed"
    assert resource["id"].endswith(f"/jobs/{job}") and resource["properties"]["jobType"]
    assert world.errors == []
    assert world.rest.call("DELETE", f"/batchEndpoints/{endpoint}")[0] == 200


@pytest.mark.parametrize("page_name", ["batch", "jobs", "assets"])
def test_other_pages_render_without_errors(world: World, page_name: str) -> None:
    page = world.page
    data = f"portal-data-{os.getpid()}"
    if page_name == "assets":  # a version registered over REST, listed from Azure's shape
        body = {"properties": {"dataType": "uri_file", "dataUri": "https://example.com/a.csv"}}
        status, _ = world.rest.call("PUT", f"/data/{data}/versions/1", body)
        assert status in (200, 201)
    page.goto(f"{world.platform.management_url}/portal/#/{page_name}")
    page.locator("#view table").first.wait_for()  # every service runs on this platform
    sync_api.expect(page.locator("#view [role=alert]")).to_have_count(0)
    if page_name == "assets":
        row = page.locator("#assets tr", has_text=data)
        sync_api.expect(row).to_contain_text("uri_file")
    world.shot(page_name)
    assert world.errors == []


def test_a_slow_answer_for_a_page_left_does_not_draw_over_the_next(world: World) -> None:
    """The endpoints list is slow to answer (here delayed 1.5 s in the browser) and the user
    opens a job meanwhile: the list's late answer must not replace the job page (it did:
    the job page's next poll then found no `#job` and the page said "Could not load")."""
    page = world.page
    page.goto(f"{world.platform.management_url}/portal/")
    page.evaluate("t => sessionStorage.setItem('sluice-admin-token', t)", world.rest.admin_token)
    page.evaluate(
        """() => {
          const real = window.fetch;
          const late = async (url, options) => {
            const answer = await real(url, options);
            await answer.clone().text();
            // The page handles the answer in the tasks that follow: flag a later one.
            setTimeout(() => { window.lateAnswerHandled = true; }, 200);
            return answer;
          };
          window.fetch = (url, options) => String(url).includes("/onlineEndpoints?")
            ? new Promise((done) => setTimeout(() => done(late(url, options)), 1500))
            : real(url, options);
        }"""
    )
    page.evaluate("() => { location.hash = '#/endpoints'; }")
    page.evaluate("() => { location.hash = '#/jobs/batchjob-none'; }")
    job = page.locator("#job")
    sync_api.expect(job).to_contain_text("Job:")  # the job page, which found no such job
    page.wait_for_function("() => window.lateAnswerHandled === true", timeout=30_000)
    sync_api.expect(job).to_be_attached()
    sync_api.expect(page.get_by_role("heading", name="Online endpoints")).to_have_count(0)
    world.errors.clear()  # the browser logs the missing job (404) as a console error


def signed_in(world: World) -> None:
    """Whatever ran before (each test can run alone)."""
    world.page.goto(f"{world.platform.management_url}/portal/")
    world.page.evaluate(
        "t => sessionStorage.setItem('sluice-admin-token', t)", world.rest.admin_token
    )


# Valid deployment names that are also members of every JavaScript object (and the
# portal's own word for the endpoint's totals): the registry accepts them all.
OBJECT_NAMES = ["constructor", "toString", "valueOf", "endpoint"]


def test_deployment_names_that_are_object_members_work(world: World) -> None:
    """Sliders, mirror inputs, the traffic sent and the metrics of deployments named
    `constructor`, `toString`, `valueOf` and `endpoint` (audit-rest finding 10: the portal
    looked shares up in plain objects, so `toString`'s slider read a function, the metrics
    tab failed on `constructor`, and `endpoint` merged with the endpoint's totals). The
    REST answers are played by the browser (page.route), in the API's shape."""
    page = world.page
    name = f"names-{os.getpid()}"
    state: dict[str, Any] = {
        "etag": 3,
        "traffic": {"constructor": 70, "endpoint": 30},
        "mirror": {"valueOf": 10},
        "sent": [],
    }

    def endpoint() -> dict[str, Any]:
        return {
            "name": name,
            "etag": str(state["etag"]),
            "properties": {
                "provisioningState": "Succeeded",
                "authMode": "Key",
                "scoringUri": f"http://localhost/endpoints/{name}/score",
                "traffic": state["traffic"],
                "mirrorTraffic": state["mirror"],
                "appliedEtag": str(state["etag"]),
            },
        }

    deployments = [
        {
            "name": d,
            "sku": {"capacity": 1},
            "properties": {
                "provisioningState": "Succeeded",
                "instanceType": "Standard_DS1_v2",
                "instances": [{"ready": True}],
                "statusMessage": "",
            },
        }
        for d in OBJECT_NAMES
    ]
    points = [
        {
            "time": f"2025-01-01T00:0{minute}:00Z",
            "deploymentName": d,
            "requestsPerMinute": 5 + i,
            "latencyP50Ms": 3,
            "latencyP99Ms": 9,
            "responsesByStatusClass": {"2xx": "5", "5xx": "1"},
            "cpuUtilizationPercent": 10,
            "memoryUtilizationPercent": 20,
            "instanceCount": 1,
        }
        for minute in (1, 2)
        for i, d in enumerate([*OBJECT_NAMES, ""])  # "": the endpoint's totals
    ]
    costs = {
        "currency": "USD",
        "total": 0.1,
        "lines": [
            {
                "deploymentName": "constructor",
                "instanceType": "Standard_DS1_v2",
                "instanceHours": 1,
                "hourlyPrice": 0.1,
                "cost": 0.1,
            }
        ],
    }

    def answer(route: Any) -> None:
        request = route.request
        path = request.url[len(world.platform.management_url or "") :]
        if path.startswith("/costs"):
            body: Any = costs
        elif "/metrics" in path:
            body = {"points": points}
        elif path.endswith("/deployments"):
            body = {"value": deployments, "nextLink": ""}
        elif path.endswith("/setTraffic"):
            sent = json.loads(request.post_data)
            state["sent"].append(sent)
            state["traffic"] = {k: v for k, v in sent["traffic"].items() if v > 0}
            state["etag"] += 1
            body = endpoint()
        else:
            body = endpoint()
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    pattern = re.compile(rf"/(onlineEndpoints/{name}([/?]|$)|costs\?endpointName={name})")
    signed_in(world)
    page.route(pattern, answer)
    try:
        page.goto(f"{world.platform.management_url}/portal/#/endpoints/{name}")
        sliders = {d: page.get_by_role("slider", name=d, exact=True) for d in OBJECT_NAMES}
        for d, share in {"constructor": 70, "toString": 0, "valueOf": 0, "endpoint": 30}.items():
            sync_api.expect(sliders[d]).to_have_value(str(share))
            sync_api.expect(page.locator(f"[id='out-{d}']")).to_have_text(f"{share}%")
        for d, share in {"constructor": 0, "toString": 0, "valueOf": 10, "endpoint": 0}.items():
            sync_api.expect(page.locator(f"[id='mirror-{d}']")).to_have_value(str(share))
        sliders["constructor"].focus()
        page.keyboard.press("Home")  # constructor 0: endpoint, which had the rest, takes 100
        sync_api.expect(sliders["endpoint"]).to_have_value("100")
        sync_api.expect(sliders["toString"]).to_have_value("0")
        page.get_by_role("button", name="Apply traffic").click()
        status = page.locator("#traffic-status")
        sync_api.expect(status).to_contain_text("applied: Envoy serves endpoint 100%")
        assert state["sent"] == [
            {"traffic": {"constructor": 0, "toString": 0, "valueOf": 0, "endpoint": 100}}
        ]
        world.shot("endpoint-object-names")

        page.goto(f"{world.platform.management_url}/portal/#/endpoints/{name}/metrics")
        sync_api.expect(page.locator("#costs table")).to_contain_text("constructor")
        sync_api.expect(page.locator("#view [role=alert]")).to_have_count(0)
        requests = page.locator("figure[data-chart='Requests per minute'] .legend span")
        sync_api.expect(requests).to_have_text(["endpoint total", *OBJECT_NAMES])
        cpu = page.locator("figure[data-chart='CPU %'] .legend span")
        sync_api.expect(cpu).to_have_text(OBJECT_NAMES)
        assert page.locator("figure[data-chart='CPU %'] polyline").count() == len(OBJECT_NAMES)
        world.shot("endpoint-object-names-metrics")
    finally:
        page.unroute(pattern)
    assert world.errors == []


def test_regenerate_asks_first_and_says_when_it_fails(world: World) -> None:
    """Regenerating a key that clients use breaks them at once: the page asks, Cancel (or
    Esc) changes nothing, and a refused call is shown, not swallowed (audit-rest finding
    11). The secondary key, so the other tests' primary key keeps working."""
    page = world.page
    keys_path = f"/onlineEndpoints/{world.endpoint}/listKeys"
    before = world.rest.call("POST", keys_path)[1]
    signed_in(world)
    page.goto(f"{world.platform.management_url}/portal/#/endpoints/{world.endpoint}/keys")
    regenerate = page.get_by_role("row", name="Secondary key").get_by_role(
        "button", name="Regenerate"
    )
    dialog = page.get_by_role("dialog", name="Regenerate the secondary key?")

    regenerate.click()
    sync_api.expect(dialog).to_be_visible()
    sync_api.expect(dialog).to_contain_text("gets 401")
    world.shot("endpoint-keys-confirm")
    dialog.get_by_role("button", name="Cancel").click()
    sync_api.expect(dialog).to_be_hidden()
    regenerate.click()
    page.keyboard.press("Escape")
    sync_api.expect(dialog).to_be_hidden()
    assert world.rest.call("POST", keys_path)[1] == before

    # Refused (played by the browser: a reader's 403): the page says so and why.
    refusal = {"code": 7, "message": "role reader may not call RegenerateKeys"}
    pattern = re.compile(rf"/onlineEndpoints/{world.endpoint}/regenerateKeys$")
    page.route(
        pattern,
        lambda route: route.fulfill(
            status=403, content_type="application/json", body=json.dumps(refusal)
        ),
    )
    try:
        regenerate.click()
        dialog.get_by_role("button", name="Regenerate secondary key").click()
        status = page.locator("#keys-status")
        sync_api.expect(status).to_contain_text("The secondary key was not regenerated")
        sync_api.expect(status).to_contain_text(refusal["message"])
    finally:
        page.unroute(pattern)
    world.errors.clear()  # the browser logs the refused call (403) as a console error
    assert world.rest.call("POST", keys_path)[1] == before

    regenerate.click()
    dialog.get_by_role("button", name="Regenerate secondary key").click()
    sync_api.expect(page.locator("#keys-status")).to_have_text("Regenerated the secondary key.")
    after = world.rest.call("POST", keys_path)[1]
    assert after["secondaryKey"] != before["secondaryKey"]
    assert after["primaryKey"] == before["primaryKey"]
    assert world.errors == []
