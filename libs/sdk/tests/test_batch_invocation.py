"""az's `batch-endpoint invoke --file/--inputs/--outputs` read into one input and output."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.sdk.batch import Invocation, invocation
from sluice.sdk.client import SluiceError

URI = "azureml://datastores/workspaceblobstore/paths"


def test_one_input_and_a_uri_file_output_give_the_folder_and_the_file_name(
    tmp_path: Path,
) -> None:
    inputs = {"heart": {"type": "uri_folder", "path": "data"}}
    outputs = {"score": {"type": "uri_file", "path": f"{URI}/out/preds.csv"}}
    assert invocation(inputs, outputs, "f.yml", tmp_path) == Invocation(
        str(tmp_path / "data"), "uri_folder", f"{URI}/out", "preds.csv"
    )
    folder = {"score": {"type": "uri_folder", "path": f"{URI}/out"}}
    assert invocation({"x": f"{URI}/in"}, folder, "--inputs") == Invocation(
        f"{URI}/in", "", f"{URI}/out"
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "says"),
    [
        ({}, None, "inputs must name one input"),
        ({"a": "x", "b": "y"}, None, "inputs must name one input"),
        ({"a": {"type": "uri_folder"}}, None, "input 'a' needs a path"),
        ({"a": {"type": "mltable", "path": "x"}}, None, "type 'mltable': use uri_folder"),
        ({"a": "x"}, {"s": {"type": "uri_file", "path": "preds.csv"}}, "names no file"),
        ({"a": "x"}, {"s": "y", "t": "z"}, "outputs must name one output"),
    ],
)
def test_what_cannot_be_a_model_deployment_s_job_is_refused_clearly(
    inputs: object, outputs: object, says: str
) -> None:
    with pytest.raises(SluiceError, match=says):
        invocation(inputs, outputs, "inputs.yml")
