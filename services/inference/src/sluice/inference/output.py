"""Turn what run() returned into an HTTP answer, as Azure's server does.

- an `AMLResponse` (ours, Azure's or any flask-like response): its body,
  status and headers as they are;
- a `(body, status)` or `(body, status, headers)` tuple with a status of 200-599: that
  status (any other tuple is data);
- `bytes`: sent as they are (application/octet-stream);
- anything else: JSON. A `str` becomes a JSON string, as on Azure (scripts
  that return `json.dumps(...)` get the same double-encoded answer there);
  numpy arrays and scalars, pandas frames and series, sets and decimals
  are converted; other objects are an error the caller reports as a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from sluice.common.headers import MODEL_STATUS_HEADER, NOT_PROCESSED_HEADER
from sluice.inference.http import Header

JSON: Header = (b"content-type", b"application/json")
OCTETS: Header = (b"content-type", b"application/octet-stream")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: list[Header]
    body: bytes


class NotSerializable(TypeError):
    """run() returned a value that has no JSON form."""


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, [JSON], orjson.dumps(value, option=_JSON_OPTIONS, default=_to_plain))


def encode(value: Any) -> Reply:
    """The reply for run()'s return value; raises `NotSerializable`."""
    if _is_status_tuple(value):
        inner = encode(value[0])
        headers = inner.headers + (_headers_from(value[2]) if len(value) == 3 else [])
        return Reply(value[1], headers, inner.body)
    if isinstance(value, bytes | bytearray | memoryview):
        return Reply(200, [OCTETS], bytes(value))
    response = _as_response(value)
    if response is not None:
        return response
    try:
        return json_reply(200, value)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        try:  # what Azure's json.dumps takes and orjson does not: integers beyond 64 bits
            return Reply(200, [JSON], json.dumps(value, default=_to_plain).encode())
        except (TypeError, ValueError):
            raise NotSerializable(
                f"run() returned a {type(value).__name__}, which has no JSON form: {exc}"
            ) from exc


def _is_status_tuple(value: Any) -> bool:
    """`(body, status)` or `(body, status, headers)`, as Flask reads a view's return; any
    other tuple (`(label, 1)`, `(x, True)`) is data, JSON-encoded as a list."""
    if not isinstance(value, tuple) or len(value) not in (2, 3):
        return False
    status = value[1]
    if type(status) is not int or not 200 <= status <= 599:  # 1xx is not a final answer
        return False
    return len(value) == 2 or isinstance(value[2], dict | list | tuple)


def _as_response(value: Any) -> Reply | None:
    """A reply from a response object (ours, Azure's flask-based one, or alike), else None."""
    status = getattr(value, "status_code", None)
    get_data = getattr(value, "get_data", None)
    if not isinstance(status, int) or not callable(get_data):
        return None
    if not 200 <= status <= 599:
        raise NotSerializable(f"run() returned a response with status {status}: use 200-599")
    body = get_data()
    if isinstance(body, str):
        body = body.encode()
    return Reply(status, _headers_from(getattr(value, "headers", {})), bytes(body))


# Framing is the server's; the platform's marks are the server's to set (a model's
# `x-sluice-not-processed` would have the gateway run its request again elsewhere).
_NOT_THE_MODELS = frozenset(
    {b"content-length", b"connection", b"transfer-encoding"}
    | {NOT_PROCESSED_HEADER.encode(), MODEL_STATUS_HEADER.encode()}
)


def _headers_from(headers: Any) -> list[Header]:
    items = headers.items() if hasattr(headers, "items") else headers
    skip = _NOT_THE_MODELS
    result: list[Header] = []
    for name, value in items:
        key = str(name).lower().encode("latin-1")
        if key not in skip:
            result.append((key, str(value).encode("latin-1")))
    return result


def _to_plain(value: Any) -> Any:
    """orjson's fallback for types it does not know."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return value.to_dict(orient="records")
    if hasattr(value, "tolist"):  # numpy scalars and pandas series/arrays
        return value.tolist()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
