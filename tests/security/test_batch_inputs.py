"""A batch job's http(s) input cannot aim the platform at itself (server-side request forgery).

The batch service downloads `http(s)://` inputs at invoke and the job's output is
the answer read back, so a caller allowed to invoke a job tries to make the
platform fetch its own loopback services, the cloud metadata service and this
machine's addresses, spelled in several ways. On the real platform (`sluice up`
defaults, nothing listed in SLUICE_BATCH_URL_ALLOW) each invoke is refused naming
the reason, no job is created, and the loopback server never gets a request.
What an operator lists is fetched: tests/test_batch.py::test_http_and_data_asset_inputs;
redirects and the address checks: services/batch/tests/test_fetch.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sluice.common.platform import PlatformState
from sluice.common.settings import Settings
from sluice.sdk.batch import BatchClient
from sluice.sdk.client import RegistryClient, SluiceError
from sluice.sdk.specs import load_batch_deployment, load_batch_endpoint

pytestmark = pytest.mark.integration

ENDPOINT = "sec-ssrf"


class Counting(BaseHTTPRequestHandler):
    """Answers every GET with a CSV line, counting them (it must get none)."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret,1\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def batch_endpoint(local_platform: PlatformState, tmp_path: Path) -> Iterator[Settings]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(
        "def init():\n    pass\n\n\ndef run(mini_batch):\n    return list(mini_batch)\n"
    )
    (tmp_path / "endpoint.yml").write_text(f"name: {ENDPOINT}\n")
    (tmp_path / "deployment.yml").write_text(
        yaml.safe_dump(
            {
                "name": "probe",
                "endpoint_name": ENDPOINT,
                "type": "model",
                "code_configuration": {"code": "code/", "scoring_script": "score.py"},
                "resources": {"instance_count": 1},
                "settings": {"max_concurrency_per_instance": 1},
            }
        )
    )
    settings = Settings(state_dir=local_platform.state_dir)
    with RegistryClient.connect(settings) as registry:
        registry.create_batch_endpoint(load_batch_endpoint(tmp_path / "endpoint.yml").spec)
        spec = load_batch_deployment(tmp_path / "deployment.yml", registry.upload).spec
        registry.create_batch_deployment(spec, set_default=True)
        yield settings
        registry.delete_batch_endpoint(ENDPOINT)


def test_inputs_from_the_platforms_own_addresses_are_refused(
    batch_endpoint: Settings, loopback_server: int
) -> None:
    port = loopback_server
    attacks = {
        f"http://127.0.0.1:{port}/x.csv": "127.0.0.1 is a loopback address",
        f"http://localhost:{port}/x.csv": "a loopback address",
        f"http://2130706433:{port}/x.csv": "resolves to 127.0.0.1, a loopback address",
        f"http://[::ffff:127.0.0.1]:{port}/x.csv": "a loopback address",
        "http://169.254.169.254/latest/meta-data/iam": "169.254.169.254 is a link-local address",
        "http://10.0.0.1/x.csv": "10.0.0.1 is a private address",
    }
    with BatchClient.connect(batch_endpoint) as batch:
        for url, reason in attacks.items():
            with pytest.raises(SluiceError) as refused:
                batch.invoke(ENDPOINT, input=url, input_type="uri_file")
            assert refused.value.code == "INVALID_ARGUMENT", url
            assert reason in str(refused.value), str(refused.value)
            assert "SLUICE_BATCH_URL_ALLOW" in str(refused.value)
        assert batch.list(ENDPOINT) == []  # nothing created
    assert Counting.hits == 0  # and nothing fetched
