"""Azure's job request at a batch endpoint's scoring URI, read into what `invoke` takes."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.batch.scoring_uri import JobInput, endpoint_from_host, job_input
from sluice.batch.service import InvalidArgument


def _request(inputs: Any, outputs: Any = None) -> dict[str, Any]:
    properties = {"InputData": inputs}
    if outputs is not None:
        properties["OutputData"] = outputs
    return {"properties": properties}


def test_azures_documented_body() -> None:
    body = _request(
        {"heart_dataset": {"JobInputType": "UriFolder", "Uri": "azureml://datastores/d/paths/in"}},
        {"score": {"JobOutputType": "UriFile", "Uri": "azureml://datastores/d/paths/o/p.csv"}},
    )
    assert job_input(body) == JobInput(
        "azureml://datastores/d/paths/in", "uri_folder", "azureml://datastores/d/paths/o", "p.csv"
    )


def test_names_ignore_case_and_outputs_are_optional() -> None:
    body = {"Properties": {"inputdata": {"x": {"jobinputtype": "urifile", "uri": " https://a/b "}}}}
    assert job_input(body) == JobInput("https://a/b", "uri_file")
    folder = _request(
        {"x": {"JobInputType": "uri_folder", "Uri": "u"}},
        {"y": {"JobOutputType": "UriFolder", "Uri": "azureml://datastores/d/paths/o"}},
    )
    assert job_input(folder).output_path == "azureml://datastores/d/paths/o"
    assert job_input(folder).output_file_name is None


def test_a_data_assets_long_uri_becomes_its_reference() -> None:
    prefix = "azureml://locations/westeurope/workspaces/ws/data/heart"
    for version, reference in [("3", "azureml:heart:3"), ("labels/latest", "azureml:heart@latest")]:
        body = _request({"x": {"JobInputType": "UriFolder", "Uri": f"{prefix}/versions/{version}"}})
        assert job_input(body).uri == reference


def test_the_older_dataset_body() -> None:
    """`dataset` / `outputDataset` / `outputFileName`, as azureml-examples' scripts send."""

    def dataset(**entry: str) -> dict[str, Any]:
        return {"properties": {"dataset": entry}}

    url = "https://pipelinedata.blob.core.windows.net/sampledata"
    assert job_input(dataset(dataInputType="DataUrl", Path=f"{url}/mnist")) == JobInput(
        f"{url}/mnist", "uri_folder"
    )
    taxi = dataset(dataInputType="DataUrl", Path=f"{url}/nytaxi/taxi-tip-data.csv")
    assert job_input(taxi).input_type == "uri_file"
    long = "azureml://subscriptions/s/resourcegroups/rg/workspaces/ws/data/mnist/versions/1"
    assert job_input(dataset(dataInputType="DataUrl", Path=long)) == JobInput("azureml:mnist:1", "")
    unset = "azureml://subscriptions/s/resourcegroups//workspaces//data/mnist/versions/1"
    assert job_input(dataset(dataInputType="DataUrl", Path=unset)).uri == "azureml:mnist:1"
    store = "azureml://subscriptions/s/resourcegroups/rg/workspaces/ws/datastores/d/paths/in/"
    assert job_input(dataset(dataInputType="DataUrl", Path=store)).uri == (
        "azureml://datastores/d/paths/in/"
    )
    named = dataset(dataInputType="DatasetVersion", datasetName="mnist", datasetVersion="7")
    assert job_input(named) == JobInput("azureml:mnist:7", "")
    named["properties"]["outputDataset"] = {
        "datastoreId": "/subscriptions/s/resourceGroups/rg/providers/x/workspaces/ws/"
        "datastores/workspaceblobstore",
        "path": "/out/here/",
    }
    named["properties"]["outputFileName"] = "scores.csv"
    assert job_input(named) == JobInput(
        "azureml:mnist:7",
        "",
        "azureml://datastores/workspaceblobstore/paths/out/here",
        "scores.csv",
    )
    for bad, says in [
        (dataset(dataInputType="DatasetId", id="x"), "use DataUrl or DatasetVersion"),
        (dataset(dataInputType="DataUrl"), "dataset.Path must be"),
        (
            {"properties": {"dataset": {"dataInputType": "DataUrl", "Path": "u"}, "InputData": {}}},
            "not both",
        ),
        ({"properties": {"InputData": {}, "outputFileName": "x.csv"}}, "go with dataset"),
    ]:
        with pytest.raises(InvalidArgument) as refused:
            job_input(bad)
        assert says in str(refused.value)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "the request body must be a JSON object"),
        ({}, "properties must be a JSON object"),
        ({"properties": {}, "name": "x"}, "takes only 'properties', not name"),
        ({"properties": {}}, "properties.InputData is missing"),
        ({"properties": {"InputData": {}, "Extra": 1}}, "properties.extra is not understood"),
        (_request({}), "exactly one named entry, got 0"),
        (_request({"x": {"JobInputType": "Literal", "Value": "1"}}), "JobInputType 'Literal'"),
        (_request({"x": {"JobInputType": "UriFolder"}}), "InputData.x.Uri must be"),
        (_request({"x": "azureml://d"}), "InputData.x must be a JSON object"),
        (
            _request({"x": {"JobInputType": "UriFolder", "Uri": "u", "uri": "v"}}),
            "has 'uri' twice",
        ),
        (
            _request(
                {"x": {"JobInputType": "UriFolder", "Uri": "u"}},
                {"o": {"JobOutputType": "MLTable", "Uri": "v"}},
            ),
            "JobOutputType 'mltable'",
        ),
        (
            _request(
                {"x": {"JobInputType": "UriFolder", "Uri": "u"}},
                {"o": {"JobOutputType": "UriFile", "Uri": "file.csv"}},
            ),
            "names no file",
        ),
    ],
)
def test_mistakes_name_the_field(body: Any, says: str) -> None:
    with pytest.raises(InvalidArgument, match=None) as refused:
        job_input(body)
    assert says in str(refused.value)


def test_the_endpoint_is_the_hosts_first_label() -> None:
    assert endpoint_from_host("Scorer.Example.com:8443", "example.com") == "scorer"
    assert endpoint_from_host("scorer.example.com", "example.com.") == "scorer"
    for host in ["localhost:8443", "a.b.example.com", "example.com", "", "[::1]:80"]:
        with pytest.raises(InvalidArgument) as refused:
            endpoint_from_host(host, "example.com")
        assert "/endpoints/<endpoint>/jobs" in str(refused.value)
