"""A LightGBM MLflow model deployed with no code: it runs in the model's own environment.

Azure's no-code MLflow deployments build the environment from the model's
`conda.yaml`; without that, the inference server would fail with
ModuleNotFoundError: lightgbm (issue 16). Here the provisioner builds the
model's environment (cached like any other) and the built-in MLflow scorer
answers Azure's `input_data` and MLflow's `dataframe_split` forms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sluice.common import gateway_auth
from sluice.common.resources import ProvisioningState
from sluice.sdk.client import RegistryClient
from sluice.sdk.specs import load_online_deployment, load_online_endpoint
from sluice.testing.plugin import RunningService
from sluice.testing.wait import wait_for

pytestmark = pytest.mark.integration

# y = 2x + 1, learnt by a native LightGBM booster (saved in a subprocess: MLflow imports
# slowly); it prints its own predictions for x = 3 and 10, which the deployment must give.
TRAIN = """
import sys, pandas as pd, lightgbm as lgb, mlflow.lightgbm
X = pd.DataFrame({"x": [float(i) for i in range(40)]})
booster = lgb.train({"objective": "regression", "min_data_in_leaf": 2, "verbose": -1},
                    lgb.Dataset(X, [2 * v + 1 for v in X["x"]]), num_boost_round=30)
mlflow.lightgbm.save_model(booster, sys.argv[1], input_example=X.head(2))
print(booster.predict(pd.DataFrame({"x": [3.0, 10.0]})).tolist())
"""


@pytest.mark.timeout(600)  # the model's environment is built once (uv's cache makes it quick)
def test_no_code_lightgbm_mlflow_model_serves_from_its_own_environment(
    provisioner: RunningService, client: RegistryClient, tmp_path: Path, envs_dir: Path
) -> None:
    model = tmp_path / "lgbm-model"
    # Outside the checkout: MLflow would otherwise export the uv project's requirements.
    trained = subprocess.run(
        [sys.executable, "-c", TRAIN, str(model)],
        check=True, timeout=300, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    expected = json.loads(trained.stdout.strip().splitlines()[-1])
    assert "lightgbm" in (model / "conda.yaml").read_text()
    (tmp_path / "endpoint.yml").write_text("name: lgbm-endpoint\n")
    (tmp_path / "deployment.yml").write_text(
        "name: lgbm\nendpoint_name: lgbm-endpoint\nmodel:\n  path: lgbm-model\n"
        "  type: mlflow_model\ninstance_type: Standard_DS3_v2\ninstance_count: 1\n"
    )
    client.create_online_endpoint(load_online_endpoint(tmp_path / "endpoint.yml").spec)
    spec = load_online_deployment(tmp_path / "deployment.yml", client.upload).spec
    assert "lightgbm" in spec.environment.conda_file  # the model's environment, not ours
    client.create_online_deployment(spec)

    def settled() -> object:
        doc = client.get_online_deployment("lgbm-endpoint", "lgbm")
        done = {ProvisioningState.succeeded, ProvisioningState.failed}
        return doc if doc.meta.provisioning_state in done else None

    doc = wait_for(settled, "the LightGBM deployment to settle", deadline=540)
    assert doc.meta.provisioning_state is ProvisioningState.succeeded, doc.meta.status_message
    built = [p.read_text() for p in envs_dir.glob("*/.ready")]
    assert any("lightgbm==" in text for text in built)
    secret = gateway_auth.secret_for(provisioner.settings.secret_key or "", "lgbm-endpoint", "lgbm")
    address = doc.instances[0].address
    for body in (
        {"input_data": {"columns": ["x"], "index": [0, 1], "data": [[3.0], [10.0]]}},
        {"dataframe_split": {"columns": ["x"], "data": [[3.0], [10.0]]}},
    ):
        reply = httpx.post(
            f"http://{address}/score", json=body, headers={gateway_auth.HEADER: secret}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        predictions = reply.json()
        assert predictions == pytest.approx(expected), (predictions, expected)
        assert predictions[0] < predictions[1]  # y = 2x + 1 grows
