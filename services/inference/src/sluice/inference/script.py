"""Load a scoring script the way Azure ML does, and call its run() for a request.

`load_script` sets `AZUREML_MODEL_DIR`, puts the code folder on `sys.path`,
imports the script and checks it has `init()` and `run()`. `Scorer` then
decides once, from run()'s signature, how each request is passed to it:

- `@rawhttp`: run(request) gets the raw request (`compat.AMLRequest`);
- `@input_schema` (the inference_schema package): the JSON body's keys are
  passed as run()'s keyword arguments, and the decorator converts them;
- otherwise run(raw_data) gets the body as a `str` (for GET, the query
  parameters as a JSON object, as Azure does).

A parameter named `request_headers` receives the request's headers.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from sluice.inference.compat import (
    PLATFORM_HEADERS,
    AMLRequest,
    Headers,
    install_azure_shims,
    wants_raw_request,
)
from sluice.inference.http import HttpRequest

Call = Callable[[], Any]


class ScriptError(RuntimeError):
    """The scoring script cannot be used (missing file, init/run, or a bad run() signature)."""


class BadInput(ValueError):
    """The request cannot be turned into run()'s arguments (answered with 400)."""


@dataclass(frozen=True)
class ScoringFunctions:
    init: Callable[[], Any]
    run: Callable[..., Any]
    origin: str  # the script's path, or which built-in scorer
    # run() takes {"data": rows} and answers one value per row (adaptive batching may
    # merge requests): a script's module-level `BATCHABLE = True`, or a built-in scorer.
    batchable: bool = False
    # A built-in scorer's (input, output) swagger schemas, known once init() has run (an
    # MLflow model's come from its signature); a script's come from its decorators.
    swagger: Callable[[], tuple[Any, Any] | None] | None = None


def model_dir_for(model: Path) -> Path:
    """Azure's `AZUREML_MODEL_DIR`: the folder that holds the model file or the model folder.

    So `os.path.join(AZUREML_MODEL_DIR, "model/x.pkl")` finds a folder named
    `model`, and `os.path.join(AZUREML_MODEL_DIR, "x.pkl")` a single file.
    """
    return model.resolve().parent


def load_script(script: Path, code_dir: Path) -> ScoringFunctions:
    """Import the scoring script (after `AZUREML_MODEL_DIR` is set) and find init() and run()."""
    if not script.is_file():
        raise ScriptError(f"scoring script {script} does not exist")
    install_azure_shims()
    code = str(code_dir.resolve())
    if code not in sys.path:
        sys.path.insert(0, code)
    name = script.stem
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ScriptError(f"cannot import {script} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so pickles of classes defined in the script load
    spec.loader.exec_module(module)
    for function in ("init", "run"):
        if not callable(getattr(module, function, None)):
            raise ScriptError(f"scoring script {script} has no {function}() function")
    return ScoringFunctions(
        init=module.init,
        run=module.run,
        origin=str(script),
        batchable=getattr(module, "BATCHABLE", False) is True,
    )


class Scorer:
    """Calls init() once and turns each request into a call of run()."""

    def __init__(self, functions: ScoringFunctions) -> None:
        self.functions = functions
        run = functions.run
        params = [p for p in inspect.signature(run).parameters.values()]
        if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
            raise ScriptError("run() cannot take positional-only arguments, *args or **kwargs")
        self._with_headers = any(p.name == "request_headers" for p in params)
        self._params = [p for p in params if p.name != "request_headers"]
        if not self._params:
            raise ScriptError("run() needs an argument for the input data")
        self.is_async = inspect.iscoroutinefunction(run)
        self.raw_request = wants_raw_request(run)
        self.schema = _schema_of(run)
        if self.raw_request and self.schema is not None:
            raise ScriptError("run() cannot be decorated with both @rawhttp and @input_schema")

    @property
    def batchable(self) -> bool:
        """Whether requests may be merged: run(raw) takes batches and gets nothing else."""
        plain = not (self.raw_request or self.schema is not None or self._with_headers)
        return self.functions.batchable and plain and not self.is_async

    def init(self) -> None:
        self.functions.init()

    def swagger_schema(self) -> tuple[Any, Any] | None:
        """run()'s (input, output) swagger schemas: its decorators', else a built-in
        scorer's (after init()); None for the generic ones."""
        if self.schema is not None or self.functions.swagger is None:
            return self.schema
        return self.functions.swagger()

    def prepare(self, request: HttpRequest) -> Call:
        """A call of run() with this request's input; raises `BadInput`."""
        run = self.functions.run
        if self.raw_request:
            data: Any = AMLRequest.from_http(
                request.method, request.target, request.headers, request.body
            )
            kwargs = {self._params[0].name: data}
        elif self.schema is not None:
            kwargs = self._schema_arguments(request)
        else:
            kwargs = {self._params[0].name: self._text(request)}
        if self._with_headers:
            kwargs["request_headers"] = _headers(request)
        first = self._params[0].name
        if len(kwargs) == 1 and first in kwargs and self.schema is None:
            value = kwargs[first]
            return lambda: run(value)
        # By name, as Azure calls it: inference_schema converts an optional argument only then.
        return lambda: run(**kwargs)

    def _text(self, request: HttpRequest) -> str:
        if request.method == "GET":
            return orjson.dumps(_query_values(request.query)).decode()
        try:
            return request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"the request body is not UTF-8 text: {exc}") from None

    def _schema_arguments(self, request: HttpRequest) -> dict[str, Any]:
        if request.method == "GET":
            body: Any = _query_values(request.query)
        else:
            body = parse_json(request.body)
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object with run()'s arguments")
        kwargs: dict[str, Any] = {}
        for param in self._params:
            value = body.get(param.name, param.default)
            if value is inspect.Parameter.empty:
                raise BadInput(f"the request has no value for run()'s argument {param.name!r}")
            kwargs[param.name] = value
        return kwargs


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, as Azure's server reads it (Python's json): orjson first, and
    what orjson refuses but Python's json takes (NaN, Infinity, a byte-order mark) by json;
    `BadInput` when neither reads it."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadInput(f"the request body is not JSON: {exc}") from None


def _headers(request: HttpRequest) -> Headers:
    return Headers(
        {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in request.headers
            if k not in PLATFORM_HEADERS
        }
    )


def _query_values(query: str) -> dict[str, Any]:
    """Query parameters as Azure reads them: JSON values where they parse, lists when repeated."""
    values: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        if key in values:
            previous = values[key]
            values[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            values[key] = value
    return values


def _schema_of(run: Callable[..., Any]) -> tuple[Any, Any] | None:
    """(input schema, output schema) when run() uses inference_schema's decorators."""
    util = sys.modules.get("inference_schema.schema_util")
    if util is None or not util.is_schema_decorated(run):
        return None
    return util.get_input_schema(run), util.get_output_schema(run)


def set_model_dir(model: Path | None) -> None:
    if model is not None:
        os.environ["AZUREML_MODEL_DIR"] = str(model_dir_for(model))


def set_script_variables(code: Path | None, scoring_script: str | None) -> None:
    """Azure's variables for the script's folder and name, where whoever started the server
    (the provisioner sets them; `--local` and a server started by hand do not) left them out:
    samples read `AML_APP_ROOT` in init()."""
    if code is not None:
        os.environ.setdefault("AML_APP_ROOT", str(code.resolve()))
        os.environ.setdefault("AZUREML_SOURCE_DIRECTORY", str(code.resolve()))
    if scoring_script is not None:
        os.environ.setdefault("AZUREML_ENTRY_SCRIPT", scoring_script)
