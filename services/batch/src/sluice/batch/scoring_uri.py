"""A batch endpoint's scoring URI: `POST <scoring_uri>` with Azure's body, as a job request.

Azure starts a batch job with

    POST https://<endpoint>.<region>.inference.ml.azure.com/jobs
    Authorization: Bearer <token>
    azureml-model-deployment: <deployment>        (optional: else the default one)

    {"properties": {
        "InputData":  {"<any name>": {"JobInputType": "UriFolder", "Uri": "<uri>"}},
        "OutputData": {"<any name>": {"JobOutputType": "UriFile",
                                      "Uri": "azureml://datastores/<ds>/paths/<p>/out.csv"}}}}

A model deployment takes exactly one data input and at most one output, whatever their
names. The gateway sends `/endpoints/<endpoint>/jobs` (and `<endpoint>.<domain>/jobs`)
here through Envoy's gRPC-JSON transcoder (Batch.CreateEndpointJob); the token is a
Sluice token (`sluice token create --role deployer`, or the admin token), which the
service checks as it checks every call. Keys are read without regard to case, as
Azure's .NET services read JSON; anything else in `properties` is refused with its
name rather than silently ignored (a misspelt `OutputData` would write elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.batch.service import InvalidArgument

DEPLOYMENT_HEADER = "azureml-model-deployment"
HOST_HEADER = "x-sluice-endpoint-host"  # set by the gateway on `<endpoint>.<domain>/jobs`

INPUT_TYPES = {"urifolder": "uri_folder", "urifile": "uri_file"}
# The workspace part of Azure's long URIs, in either of its spellings (its parts may be
# empty: scripts build them from `az account show` and `az configure -l`, which Sluice's
# az forwarder answers without an Azure subscription or workspace).
_WORKSPACE = (
    r"azureml://(?:locations/[^/]*|subscriptions/[^/]*/resourcegroups/[^/]*)/workspaces/[^/]*"
)
# A registered data asset, or a datastore path, by its long URI, as Azure's examples give them.
DATA_ASSET_URI = re.compile(rf"^{_WORKSPACE}/data/([^/]+)/versions/(.+)$", re.IGNORECASE)
DATASTORE_URI = re.compile(rf"^{_WORKSPACE}/(datastores/.+)$", re.IGNORECASE)
# The older body's `outputDataset.datastoreId`: `azureml:<ds>` or an ARM id ending in it.
DATASTORE_ID = re.compile(r"^(?:azureml:|.*/datastores/)([^/]+)/?$", re.IGNORECASE)
EXAMPLE = (
    '{"properties": {"InputData": {"input": {"JobInputType": "UriFolder", '
    '"Uri": "azureml://datastores/<datastore>/paths/<folder>"}}}}'
)


@dataclass(frozen=True)
class JobInput:
    uri: str
    input_type: str  # uri_folder | uri_file
    output_path: str = ""  # "" = the job's default folder
    output_file_name: str | None = None  # set by a UriFile output


def _keys(mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`mapping` keyed by lower-cased names; two keys differing only by case are refused."""
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        low = key.lower()
        if low in result:
            raise InvalidArgument(f"{where} has {key!r} twice (names ignore case)")
        result[low] = value
    return result


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where} must be a JSON object, e.g. {EXAMPLE}")
    return _keys(value, where)


def _string(fields: Mapping[str, Any], key: str, where: str) -> str:
    value = fields.get(key.lower())
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}.{key} must be a non-empty string")
    return value.strip()


def _single(fields: Mapping[str, Any], key: str, *, required: bool) -> tuple[str, Any] | None:
    """The one entry of `properties.<key>` (its name is free, as on Azure)."""
    value = fields.get(key.lower())
    if value is None and not required:
        return None
    if value is None:
        raise InvalidArgument(f"properties.{key} is missing: {EXAMPLE}")
    if not isinstance(value, Mapping) or len(value) != 1:
        count = len(value) if isinstance(value, Mapping) else "no"
        raise InvalidArgument(
            f"properties.{key} must hold exactly one named entry, got {count}: a model "
            "deployment takes one data input and writes one output"
        )
    ((name, entry),) = value.items()
    return name, entry


def _data_asset(uri: str) -> str:
    """Azure's long URIs as what the service resolves: a data asset's as its `azureml:`
    reference, a datastore path's as `azureml://datastores/<ds>/paths/<p>`."""
    match = DATA_ASSET_URI.match(uri)
    if match is None:
        store = DATASTORE_URI.match(uri)
        return f"azureml://{store.group(1)}" if store else uri
    name, version = match.group(1), match.group(2)
    if version.lower() == "labels/latest":
        return f"azureml:{name}@latest"
    return f"azureml:{name}:{version}"


def _input(fields: Mapping[str, Any]) -> tuple[str, str]:
    found = _single(fields, "InputData", required=True)
    assert found is not None
    name, entry = found
    where = f"properties.InputData.{name}"
    entry = _object(entry, where)
    kind = _string(entry, "JobInputType", where)
    input_type = INPUT_TYPES.get(kind.replace("_", "").lower())
    if input_type is None:
        raise InvalidArgument(
            f"{where}.JobInputType {kind!r}: a model deployment reads data, UriFolder or "
            "UriFile (literal inputs are for pipeline deployments, which Sluice does not run)"
        )
    return _data_asset(_string(entry, "Uri", where)), input_type


def _output(fields: Mapping[str, Any]) -> tuple[str, str | None]:
    found = _single(fields, "OutputData", required=False)
    if found is None:
        return "", None
    name, entry = found
    where = f"properties.OutputData.{name}"
    entry = _object(entry, where)
    kind = _string(entry, "JobOutputType", where).replace("_", "").lower()
    uri = _string(entry, "Uri", where)
    if kind == "urifolder":
        return uri, None
    if kind == "urifile":  # the file the job appends its rows to
        folder, _, file_name = uri.rstrip("/").rpartition("/")
        if not folder or not file_name:
            raise InvalidArgument(f"{where}.Uri {uri!r} names no file")
        return folder, file_name
    raise InvalidArgument(f"{where}.JobOutputType {kind!r}: use UriFolder or UriFile")


def _dataset(fields: Mapping[str, Any]) -> tuple[str, str]:
    """The older body's input (Azure's examples still send it): `dataset` with
    `dataInputType` DataUrl (`Path`: a file or a folder, told apart by a file extension
    on its last segment, as the body does not say) or DatasetVersion (`datasetName`,
    `datasetVersion`)."""
    where = "properties.dataset"
    entry = _object(fields["dataset"], where)
    kind = _string(entry, "dataInputType", where).lower()
    if kind == "dataurl":
        uri = _data_asset(_string(entry, "Path", where))
        if uri.startswith("azureml:") and not uri.startswith("azureml://"):
            return uri, ""  # a data asset: its own type
        last = uri.rstrip("/").rpartition("/")[2]
        return uri, "uri_file" if "." in last and not uri.endswith("/") else "uri_folder"
    if kind == "datasetversion":
        name = _string(entry, "datasetName", where)
        version = _string(entry, "datasetVersion", where)
        return f"azureml:{name}:{version}", ""
    raise InvalidArgument(f"{where}.dataInputType {kind!r}: use DataUrl or DatasetVersion")


def _output_dataset(fields: Mapping[str, Any]) -> tuple[str, str | None]:
    """The older body's output: `outputDataset` {datastoreId, path} and `outputFileName`."""
    file_name = fields.get("outputfilename")
    if file_name is not None and (not isinstance(file_name, str) or not file_name.strip()):
        raise InvalidArgument("properties.outputFileName must be a non-empty string")
    if "outputdataset" not in fields:
        return "", file_name
    where = "properties.outputDataset"
    entry = _object(fields["outputdataset"], where)
    store = DATASTORE_ID.match(_string(entry, "datastoreId", where))
    if store is None:
        raise InvalidArgument(f"{where}.datastoreId: use azureml:<datastore> or its resource id")
    path = _string(entry, "path", where).strip("/")
    return f"azureml://datastores/{store.group(1)}/paths/{path}", file_name


NEW_FIELDS = {"inputdata", "outputdata"}
OLD_FIELDS = {"dataset", "outputdataset", "outputfilename"}


def job_input(body: Mapping[str, Any]) -> JobInput:
    """The job that Azure's request `body` asks for, or InvalidArgument saying what is wrong."""
    top = _object(body, "the request body")
    extra = sorted(set(top) - {"properties"})
    if extra:
        raise InvalidArgument(f"the request body takes only 'properties', not {', '.join(extra)}")
    fields = _object(top.get("properties"), "properties")
    extra = sorted(set(fields) - NEW_FIELDS - OLD_FIELDS)
    if extra:
        raise InvalidArgument(
            f"properties.{extra[0]} is not understood: a job request takes InputData and "
            "OutputData (or the older dataset, outputDataset and outputFileName)"
        )
    if "dataset" in fields:
        if set(fields) & NEW_FIELDS:
            raise InvalidArgument("properties: give InputData/OutputData or dataset, not both")
        uri, input_type = _dataset(fields)
        output_path, output_file_name = _output_dataset(fields)
        return JobInput(uri, input_type, output_path, output_file_name)
    if set(fields) & (OLD_FIELDS - {"dataset"}):
        raise InvalidArgument("properties: outputDataset and outputFileName go with dataset")
    uri, input_type = _input(fields)
    output_path, output_file_name = _output(fields)
    return JobInput(uri, input_type, output_path, output_file_name)


def endpoint_from_host(host: str, domain: str) -> str:
    """The endpoint named by `host` (`<endpoint>.<domain>[:port]`), or InvalidArgument."""
    bare = host.strip().lower().rsplit(":", 1)[0] if not host.startswith("[") else ""
    suffix = "." + domain.lower().strip(".")
    name = bare.removesuffix(suffix)
    if name == bare or not name or "." in name:
        raise InvalidArgument(
            f"POST /jobs at {host!r} names no batch endpoint: use "
            f"https://<endpoint>{suffix}/jobs or /endpoints/<endpoint>/jobs"
        )
    return name
