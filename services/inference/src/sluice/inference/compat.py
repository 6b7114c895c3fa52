"""Azure's helper classes for scoring scripts, so they import unchanged.

Scripts written for Azure import `AMLResponse` (to set a status code,
headers or content type) and `AMLRequest`/`rawhttp` (to receive the raw
request: files, form, stream...) from
`azureml.contrib.services` or `azureml_inference_server_http.api`. When those
packages are not installed, `install_azure_shims` registers modules of the
same names that hold the classes below. It never shadows a real install: if
any `azureml` package exists, the script's environment must provide them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from werkzeug.wrappers import Request, Response

from sluice.common import gateway_auth

RAWHTTP_ATTR = "__sluice_rawhttp__"
# Headers that are the platform's, not the caller's: run() never sees them (the gateway's
# secret would otherwise be one `print(request_headers)` away from the deployment's logs).
PLATFORM_HEADERS = frozenset({gateway_auth.HEADER.encode()})

F = TypeVar("F", bound=Callable[..., Any])


class AMLResponse(Response):
    """Azure's `AMLResponse`: a flask (werkzeug) response with Azure's constructor.

    `json_str` sends `json.dumps(message)` as application/json; `None` sends `{}`;
    anything else is the body as flask takes it (str or bytes), `text/html` unless the
    script sets `mimetype`/`content_type`. A header value with commas becomes repeated
    headers, and `x-ms-run-function-failed` is always set, as Azure's server does.
    """

    default_mimetype = "text/html"  # flask's, which Azure's class derives from

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: Mapping[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        if message is None:
            super().__init__("{}", status=int(status_code), mimetype="application/json")
        elif json_str:
            super().__init__(
                json.dumps(message), status=int(status_code), mimetype="application/json"
            )
        else:
            super().__init__(message, status=int(status_code))
        for name, value in (response_headers or {}).items():
            parts = [p.strip() for p in str(value).split(",")] if "," in str(value) else [value]
            self.headers.remove(name)
            for part in parts:
                self.headers.add(name, part)
        self.headers["x-ms-run-function-failed"] = str(run_function_failed)


class AMLRequest(Request):
    """The request a `@rawhttp` run() receives: Azure's is flask's request class, so this is
    werkzeug's (`files`, `form`, `stream`, `args`, `headers`, `mimetype`, `get_json()`...)."""

    # flask's limits: form fields in memory up to 500 kB (files spill to temporary files).
    max_form_memory_size = 500_000

    @classmethod
    def from_http(
        cls, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AMLRequest:
        """Build the WSGI environ werkzeug parses from what our HTTP layer read."""
        raw_path, _, query = target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            if name in PLATFORM_HEADERS:
                continue
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if key == "CONTENT_TYPE":
                    environ[key] = text
                continue
            if key == "HOST":
                host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
                environ["SERVER_NAME"] = host or text
                environ["SERVER_PORT"] = port or "80"
            wsgi_key = f"HTTP_{key}"
            environ[wsgi_key] = f"{environ[wsgi_key]},{text}" if wsgi_key in environ else text
        return cls(environ)


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
    """Request headers as Azure's run() gets them (`dict(flask.request.headers)`): names as
    werkzeug writes them (`Content-Type`, `X-Custom`), looked up case-insensitively."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__({k.title(): v for k, v in headers.items()})

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.title(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.title())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.title())


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
