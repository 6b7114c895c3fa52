"""Azure's helper classes for scoring scripts, so they import unchanged.

Scripts written for Azure import `AMLResponse` (to set a status code or
headers) and `AMLRequest`/`rawhttp` (to receive the raw request) from
`azureml.contrib.services` or `azureml_inference_server_http.api`. When those
packages are not installed, `install_azure_shims` registers modules of the
same names that hold the classes below. It never shadows a real install: if
any `azureml` package exists, the script's environment must provide them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl

RAWHTTP_ATTR = "__sluice_rawhttp__"

F = TypeVar("F", bound=Callable[..., Any])


class AMLResponse:
    """A response with its own status code and headers, as Azure's `AMLResponse`."""

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: Mapping[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        self.status_code = int(status_code)
        self.headers: dict[str, str] = dict(response_headers or {})
        if message is None:
            self.body, self.content_type = b"{}", "application/json"
        elif json_str:
            self.body, self.content_type = json.dumps(message).encode(), "application/json"
        elif isinstance(message, bytes | bytearray):
            self.body, self.content_type = bytes(message), "application/octet-stream"
        else:
            self.body, self.content_type = str(message).encode(), "text/html; charset=utf-8"
        self.headers.setdefault("Content-Type", self.content_type)
        self.headers["x-ms-run-function-failed"] = str(run_function_failed)

    def get_data(self) -> bytes:
        return self.body


class AMLRequest:
    """The raw request a `@rawhttp` run() receives: the parts of flask's request scripts use."""

    def __init__(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes):
        self.method = method
        self.path = path
        self.full_path = f"{path}?{query}"
        self.query_string = query.encode()
        self.headers = Headers(headers)
        self.args = dict(parse_qsl(query))
        self.data = body

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.data.decode("utf-8") if as_text else self.data

    def get_json(self) -> Any:
        return json.loads(self.data)

    @property
    def json(self) -> Any:
        return self.get_json()


def rawhttp(func: F) -> F:
    """Mark run() as taking the raw request (Azure's `@rawhttp`)."""
    setattr(func, RAWHTTP_ATTR, True)
    return func


def wants_raw_request(run: Callable[..., Any]) -> bool:
    """True if run() is decorated with our `rawhttp` or with Azure's own one."""
    if getattr(run, RAWHTTP_ATTR, False):
        return True
    for name in (
        "azureml.contrib.services.aml_request",
        "azureml_inference_server_http.api.aml_request",
    ):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "_rawHttpRequested", False):
            return True
    return False


class Headers(dict[str, str]):
    """Request headers; names are looked up case-insensitively, as in flask."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in headers.items()})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


SHIM_PACKAGES = {
    "azureml": ("azureml.contrib", "azureml.contrib.services"),
    "azureml_inference_server_http": ("azureml_inference_server_http.api",),
}


def install_azure_shims() -> list[str]:
    """Register Azure's helper modules where no real package provides them; return their names."""
    installed: list[str] = []
    for top, packages in SHIM_PACKAGES.items():
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue
        for name in (top, *packages):
            package = ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
        leaf = packages[-1]
        response = ModuleType(f"{leaf}.aml_response")
        response.AMLResponse = AMLResponse  # type: ignore[attr-defined]
        request = ModuleType(f"{leaf}.aml_request")
        request.AMLRequest = AMLRequest  # type: ignore[attr-defined]
        request.rawhttp = rawhttp  # type: ignore[attr-defined]
        for module in (response, request):
            sys.modules[module.__name__] = module
            setattr(sys.modules[leaf], module.__name__.rsplit(".", 1)[1], module)
        installed += [response.__name__, request.__name__]
    return installed
