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
# A registered data asset by its long URI, as Azure's REST examples give it.
DATA_ASSET_URI = re.compile(
    r"^azureml://locations/[^/]+/workspaces/[^/]+/data/([^/]+)/versions/(.+)$", re.IGNORECASE
)
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
    """Azure's long data-asset URI as the `azureml:` reference the service resolves."""
    match = DATA_ASSET_URI.match(uri)
    if match is None:
        return uri
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


def job_input(body: Mapping[str, Any]) -> JobInput:
    """The job that Azure's request `body` asks for, or InvalidArgument saying what is wrong."""
    top = _object(body, "the request body")
    extra = sorted(set(top) - {"properties"})
    if extra:
        raise InvalidArgument(f"the request body takes only 'properties', not {', '.join(extra)}")
    fields = _object(top.get("properties"), "properties")
    extra = sorted(set(fields) - {"inputdata", "outputdata"})
    if extra:
        raise InvalidArgument(
            f"properties.{extra[0]} is not understood: a job request takes InputData and OutputData"
        )
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
