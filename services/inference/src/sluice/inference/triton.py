"""Azure's no-code Triton deployments (`model: {type: triton_model, path: ...}`, no code).

The model folder is a Triton model repository, `<repository>/<model>/<version>/model.onnx`
with an optional `<model>/config.pbtxt` (azureml-examples' single-model sample deploys
`path: ./models`, which holds `model_1/1/model.onnx`); `path` may also name the model's
own folder. Azure runs Triton on it, so clients (tritonclient) call the model by its
folder's name with its graph's tensor names: `/v2/models/model_1/infer` with input
`data_0`, reading output `fc6_1`. Sluice serves it the same way (onnx_oip.py), under
that name, the version Triton would load (the highest number) and, as before, under the
deployment's and endpoint's names (the generic run() path, unless one of them is the
model's name) and on /score.

Triton runs many kinds of models; Sluice runs ONNX with onnxruntime only. A repository
of several models, or a model of another kind (TensorRT plan, TorchScript, TensorFlow,
the Python backend, an ensemble), is refused at start-up with a message that says so,
rather than served wrongly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sluice.inference.builtin import onnx_predictor, predict_request
from sluice.inference.oip import InferAnswer
from sluice.inference.onnx_oip import Inference, OnnxGraph
from sluice.inference.script import ScoringFunctions, ScriptError

CONFIG = "config.pbtxt"
ONNX_FILE = "model.onnx"  # Triton's default model file name for ONNX
# Triton's default model file names of the kinds Sluice does not run.
OTHER_FILES = {
    "model.plan": "a TensorRT plan",
    "model.pt": "a PyTorch TorchScript model",
    "model.savedmodel": "a TensorFlow SavedModel",
    "model.graphdef": "a TensorFlow GraphDef",
    "model.py": "a Python backend model",
    "model.xml": "an OpenVINO model",
}
# config.pbtxt's `platform` or `backend` values that mean ONNX with onnxruntime.
ONNX_RUNTIMES = {"onnxruntime_onnx", "onnxruntime"}
WHAT_SLUICE_SERVES = (
    "without a scoring script Sluice serves a Triton repository of one ONNX model "
    "(<model>/<version>/model.onnx), run with onnxruntime"
)
# A top-level `field: value` of protobuf text; the value quoted or a bare word.
_FIELD = re.compile(r"""(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,{}\[\]#]+)""")


class TritonModel:
    """The one ONNX model of a Triton repository: its name, version and graph."""

    def __init__(self, name: str, version: str, onnx: Path) -> None:
        self.name = name
        self.version = version
        self.onnx = onnx
        self.graph = OnnxGraph(onnx)
        self._predict: Any = None
        self._metadata = b""

    def functions(self) -> ScoringFunctions:
        """init() loads the graph; run() scores /score (and the deployment's own OIP name)
        as the built-in ONNX scorer does: `{"data": rows}` into the first input."""
        return ScoringFunctions(
            init=self.load,
            run=self.score,
            origin=f"triton: {self.name} version {self.version} ({self.onnx})",
            batchable=True,
        )

    def load(self) -> None:
        self.graph.load()
        self._predict = onnx_predictor(self.graph.session)
        self._metadata = self.graph.metadata(self.name, self.version)

    def score(self, raw_data: str) -> Any:
        return predict_request(self._predict, raw_data)

    def metadata(self) -> bytes:
        return self._metadata

    def decode(self, body: bytes, header_length: bytes | None) -> Inference:
        return self.graph.decode(self.name, body, header_length)

    def checked(self, request: Any, tail: bytes) -> Inference:
        return self.graph.checked(self.name, request, tail)

    def infer(self, inference: Inference) -> list[Any]:
        return self.graph.run(inference)

    def answer(self, inference: Inference, arrays: list[Any]) -> InferAnswer:
        return self.graph.answer(self.name, self.version, inference, arrays)

    def raw_outputs(
        self, inference: Inference, arrays: list[Any]
    ) -> list[tuple[str, str, list[int], bytes]]:
        return self.graph.raw_outputs(inference, arrays)


def triton_model(model: Path | None) -> TritonModel | None:
    """The Triton model in the folder `model` (a repository or one model's folder); None
    when it is no Triton layout; ScriptError when it is one Sluice does not serve."""
    if model is None or not model.is_dir() or (model / "MLmodel").is_file():
        return None
    if _is_model_folder(model):
        return _served(model)
    folders = [d for d in sorted(model.iterdir()) if d.is_dir() and _is_model_folder(d)]
    if not folders:
        return None
    if len(folders) > 1:
        names = ", ".join(d.name for d in folders)
        raise ScriptError(
            f"the Triton model repository {model} holds {len(folders)} models ({names}); "
            f"{WHAT_SLUICE_SERVES}: deploy each model on its own"
        )
    return _served(folders[0])


def _versions(folder: Path) -> list[Path]:
    """The numbered version folders of a model folder, highest first."""
    numbered = [d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()]
    return sorted(numbered, key=lambda d: int(d.name), reverse=True)


def _is_model_folder(folder: Path) -> bool:
    """Triton's layout: a config.pbtxt, or a version folder that holds a model file."""
    if (folder / CONFIG).is_file():
        return True
    known = {ONNX_FILE, *OTHER_FILES}
    return any((version / name).exists() for version in _versions(folder) for name in known)


def _served(folder: Path) -> TritonModel:
    """The model of a Triton model folder, as Triton would load it; ScriptError when it is
    not ONNX or has no model file."""
    config = _config(folder)
    for key in ("platform", "backend"):
        value = config.get(key)
        if value is not None and value not in ONNX_RUNTIMES:
            raise ScriptError(
                f'Triton model {folder.name!r} is a {value!r} model ({CONFIG}: {key}: "{value}"); '
                f"{WHAT_SLUICE_SERVES}"
            )
    versions = _versions(folder)
    if not versions:
        raise ScriptError(
            f"Triton model folder {folder} has no numbered version folder "
            f"({folder.name}/1/{ONNX_FILE}); {WHAT_SLUICE_SERVES}"
        )
    # Triton's default version policy serves the latest version: the highest number.
    version = versions[0]
    onnx = version / config.get("default_model_filename", ONNX_FILE)
    if onnx.is_dir():  # an ONNX model with its weights in files beside it
        onnx /= ONNX_FILE
    if onnx.is_file():
        return TritonModel(folder.name, version.name, onnx)
    for name, kind in OTHER_FILES.items():
        if (version / name).exists():
            raise ScriptError(
                f"Triton model {folder.name!r} version {version.name} is {kind} ({name}); "
                f"{WHAT_SLUICE_SERVES}"
            )
    raise ScriptError(
        f"Triton model {folder.name!r} version {version.name} has no {onnx.name}; "
        f"{WHAT_SLUICE_SERVES}"
    )


def _config(folder: Path) -> dict[str, str]:
    """What Sluice reads of a model's config.pbtxt: its top-level fields (`platform`,
    `backend`, `default_model_filename`); empty when there is none."""
    path = folder / CONFIG
    if not path.is_file():
        return {}
    return top_level_fields(path.read_text(encoding="utf-8", errors="replace"))


def top_level_fields(text: str) -> dict[str, str]:
    """The top-level scalar fields of a protobuf text message (nested messages and lists,
    strings and comments skipped); the first of a repeated one."""
    fields: dict[str, str] = {}
    depth = 0
    at = 0
    while at < len(text):
        char = text[at]
        if char == "#":
            end = text.find("\n", at)
            at = len(text) if end < 0 else end
        elif char in "\"'":
            end = at + 1
            while end < len(text) and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            at = end
        elif char in "{[<":
            depth += 1
        elif char in "}]>":
            depth -= 1
        elif depth == 0 and (match := _FIELD.match(text, at)) is not None:
            fields.setdefault(match.group(1), match.group(2).strip("\"'"))
            at = match.end()
            continue
        at += 1
    return fields
