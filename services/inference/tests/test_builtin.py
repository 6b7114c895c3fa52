"""No-code deployments: a model without a scoring script, served by the built-in scorers."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sluice.common.supervisor import Supervisor, free_port
from sluice.testing.inference import server_argv, start_server

pytestmark = pytest.mark.integration  # starts inference server processes

np = pytest.importorskip("numpy")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def regression(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    features, target = load_diabetes(return_X_y=True)
    return Ridge().fit(features, target), features[:4]


def test_pickled_estimator_in_a_model_folder(
    supervisor: Supervisor, tmp_path: Path, regression: tuple[Any, Any]
) -> None:
    import joblib

    model, rows = regression
    (tmp_path / "model").mkdir()
    joblib.dump(model, tmp_path / "model" / "ridge.pkl")
    server = start_server(supervisor, "generic", model=tmp_path / "model")
    reply = server.post({"data": rows.tolist()})
    assert reply.status == 200
    assert reply.json() == pytest.approx(model.predict(rows).tolist())
    assert server.post({"rows": []}).status == 400


def test_onnx_model_file(
    supervisor: Supervisor, tmp_path: Path, regression: tuple[Any, Any]
) -> None:
    pytest.importorskip("onnxruntime")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    model, rows = regression
    onnx_model = skl2onnx.convert_sklearn(
        model, initial_types=[("input", FloatTensorType([None, rows.shape[1]]))]
    )
    (tmp_path / "ridge.onnx").write_bytes(onnx_model.SerializeToString())
    server = start_server(supervisor, "onnx", model=tmp_path / "ridge.onnx")
    predictions = np.asarray(server.post({"data": rows.tolist()}).json()).ravel()
    assert predictions == pytest.approx(model.predict(rows), rel=1e-4)


def test_mlflow_model_folder(
    supervisor: Supervisor, tmp_path: Path, regression: tuple[Any, Any]
) -> None:
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    model, rows = regression
    mlflow_sklearn.save_model(model, tmp_path / "model", serialization_format="cloudpickle")
    server = start_server(supervisor, "mlflow", model=tmp_path / "model", ready=False)
    server.wait_ready(timeout=90)  # importing MLflow takes long on a busy machine
    columns = [f"f{i}" for i in range(rows.shape[1])]
    azure_form = {"input_data": {"columns": columns, "index": [0, 1, 2, 3], "data": rows.tolist()}}
    assert server.post(azure_form).json() == pytest.approx(model.predict(rows).tolist())
    expected = pytest.approx(model.predict(rows).tolist())
    # MLflow's own scoring-server forms (`mlflow models serve`), which Azure does not take.
    split = {"columns": columns, "data": rows.tolist()}
    records = [dict(zip(columns, row, strict=True)) for row in rows.tolist()]
    for form in (
        {"inputs": rows.tolist()},
        {"instances": rows.tolist()},
        {"dataframe_split": split},
        {"dataframe_records": records},
    ):
        assert server.post(form).json() == expected, form
    unknown = server.post({"rows": rows.tolist()})
    assert unknown.status == 400 and "dataframe_split" in unknown.json()["message"]


def test_folder_with_several_models_and_no_script_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    for name in ("a.pkl", "b.pkl"):
        (tmp_path / "model" / name).write_bytes(b"")
    result = subprocess.run(
        server_argv(port=free_port(), model=tmp_path / "model"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert "exactly one model file" in result.stderr
    assert "a.pkl, b.pkl" in result.stderr
