"""Composition root of the inference server: routes, start-up, init(), shutdown.

Routes (Azure's, plus readiness and the Open Inference Protocol's health):

    GET  /                   liveness: 200 "Healthy" (503 once too many runs are stuck)
    GET  /ready              readiness: 200 only after init() returned
    GET  /v2/health/live     the same as /, in OIP form
    GET  /v2/health/ready    the same as /ready, in OIP form
    POST /score              run(); GET /score passes the query parameters
    GET  /swagger.json       ?version=2|3|3.1: the code folder's file or one generated
    GET  /v2, /v2/models/<m>[/ready], POST /v2/models/<m>/infer
                             the Open Inference Protocol around the same run() (oip.py);
                             a Triton repository's ONNX model under its own name, by
                             its graph's tensors, as Triton answers (triton.py)
    POST /inference.GRPCInferenceService/<method>
                             OIP gRPC as the gateway's bridge sends it (oip_grpc_http.py)

The server listens at once, so liveness answers while the script is imported
and init() runs on a thread; /score answers 503 until then. A failing import
or init() logs the traceback and ends the process with exit code 3.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import hmac
import itertools
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
import structlog
from prometheus_client import CollectorRegistry

from sluice.common import gateway_auth
from sluice.common.headers import MODEL_STATUS_HEADER, NOT_PROCESSED_HEADER
from sluice.common.runtime import wait_for_shutdown_signal
from sluice.inference import oip, oip_binary, oip_grpc_http
from sluice.inference.batching import Batcher, BatchSettings, TraceBatch, batch_rows
from sluice.inference.builtin import builtin_scorer
from sluice.inference.collector import CollectorFeed, CollectorSettings
from sluice.inference.config import ServerConfig
from sluice.inference.dispatch import Dispatcher, Limits, Outcome, Withdraw
from sluice.inference.http import Connection, Header, HttpRequest, Responder
from sluice.inference.metrics import Metrics, scope_from_env, serve_metrics
from sluice.inference.onnx_oip import Inference
from sluice.inference.output import JSON, OCTETS, NotSerializable, Reply, encode, json_reply
from sluice.inference.script import (
    BadInput,
    Scorer,
    ScriptError,
    load_script,
    set_model_dir,
    set_script_variables,
)
from sluice.inference.swagger import SwaggerDocuments, swagger_documents
from sluice.inference.triton import TritonModel, triton_model

EXIT_INIT_FAILED = 3
MAX_REQUEST_ID = 100  # Azure's limit on x-request-id and x-ms-client-request-id
REQUEST_ID = b"x-request-id"
CLIENT_REQUEST_ID = b"x-ms-client-request-id"  # the caller's own id: echoed, as Azure's
TEXT: Header = (b"content-type", b"text/plain; charset=utf-8")
FORBIDDEN = Reply(403, [JSON], b'{"message":"only the gateway may call this instance"}')
GATEWAY_HEADER = gateway_auth.HEADER.encode()
REQUESTS_HEADER = b"x-sluice-requests"  # in liveness answers: requests seen so far
HEALTH_PATHS = frozenset({"/", "/ready", "/v2/health/live", "/v2/health/ready"})
# Refusals before any processing carry NOT_PROCESSED_HEADER: the gateway may retry them
# on another instance (and retries nothing else).
NOT_PROCESSED: Header = (NOT_PROCESSED_HEADER.encode(), b"true")
MODEL_STATUS: Header = (MODEL_STATUS_HEADER.encode(), b"true")
RUN_FAILED: Header = (b"x-ms-run-function-failed", b"True")
NOT_READY = Reply(503, [JSON, NOT_PROCESSED], b'{"message":"not ready: init() has not finished"}')
SHUTTING_DOWN = Reply(503, [JSON, NOT_PROCESSED], b'{"message":"shutting down"}')

if TYPE_CHECKING:  # tracing is imported only by a server that traces
    from sluice.inference.tracing import LeanSpan, RequestTracer

log = structlog.get_logger("sluice.inference")


class InferenceApp:
    """Answers every HTTP request; scoring goes through the dispatcher once init() is done."""

    def __init__(
        self, metrics: Metrics, model_name: str = "model", gateway_secret: str | None = None
    ) -> None:
        self.metrics = metrics
        self._gateway_secret = gateway_secret.encode() if gateway_secret else None
        self.model_name = model_name
        # Through the gateway an endpoint's traffic may be split over deployments: its name
        # works as the model's in OIP routes too, whichever deployment answers.
        self.endpoint_name = os.environ.get("AZUREML_ENDPOINT_NAME") or model_name
        self.oip_names: tuple[str, ...] = (model_name, self.endpoint_name)  # generic answers
        self.model_path: Path | None = None  # for OIP metadata from an MLflow signature
        self.triton: TritonModel | None = None  # see serve_triton()
        self.scorer: Scorer | None = None
        self.dispatcher: Dispatcher | None = None
        self.batcher: Batcher | None = None  # adaptive batching, when configured and possible
        self.swagger: SwaggerDocuments | None = None
        self.collector: CollectorFeed | None = None  # the deployment's data_collector
        self.tracing: RequestTracer | None = None  # spans, when the server traces
        self.stopping = False
        self._ids = RequestIds()
        # Requests other than health probes, told to the provisioner in each liveness answer
        # (`x-sluice-requests`): how it sees that a deployment that may scale to zero is idle.
        self.requests_seen = 0

    @property
    def ready(self) -> bool:
        return self.scorer is not None and not self.stopping

    @property
    def live(self) -> bool:
        return self.dispatcher is None or self.dispatcher.healthy

    def serve_triton(self, model: TritonModel) -> None:
        """Answer OIP calls of `model`'s name as Triton does (a no-code Triton deployment);
        the deployment's and endpoint's names keep the generic answers, unless one of them
        is that name too."""
        self.triton = model
        self.oip_names = tuple(name for name in self.oip_names if name != model.name)

    def start_scoring(
        self,
        scorer: Scorer,
        dispatcher: Dispatcher,
        swagger: SwaggerDocuments,
        batcher: Batcher | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.batcher = batcher
        self.swagger = swagger
        self.scorer = scorer

    def handle(self, request: HttpRequest, conn: Responder) -> None:
        started = time.perf_counter()
        request_id = self._ids.for_request(request)
        if isinstance(request_id, Reply):
            self._send(request, conn, self._ids.new(), started, "other", request_id)
            return
        path = request.path
        if path not in HEALTH_PATHS:
            self.requests_seen += 1
        if self._gateway_secret is not None and not self._from_gateway(request, path):
            self._send(request, conn, request_id, started, "other", FORBIDDEN)
            return
        if path == "/score":
            self._score(request, conn, request_id, started)
            return
        oip_route = oip.route(path)
        if oip_route is not None:
            self._oip(oip_route, request, conn, request_id, started)
            return
        if path.startswith(oip_grpc_http.SERVICE) and request.method == "POST":
            if path == oip_grpc_http.PATH:
                self._grpc_infer(request, conn, request_id, started)
            else:
                self._grpc_method(request, conn)
            return
        if request.method not in ("GET", "HEAD"):  # HEAD: GET's answer without its body
            reply = json_reply(405, {"message": f"{request.method} is not allowed on {path}"})
        elif path in ("/", "/v2/health/live"):
            reply = self._liveness(path)
        elif path in ("/ready", "/v2/health/ready"):
            reply = json_reply(200 if self.ready else 503, {"ready": self.ready})
        elif path == "/swagger.json":
            reply = self._swagger(request.query)
        elif path == "/v2":
            reply = Reply(200, [JSON], oip.server_metadata())
        else:
            reply = json_reply(404, {"message": f"no route {path}"})
        self._send(request, conn, request_id, started, "other", reply)

    def _from_gateway(self, request: HttpRequest, path: str) -> bool:
        """Health probes are open; everything else carries the gateway's secret header."""
        if path in HEALTH_PATHS:
            return True
        given = request.header(GATEWAY_HEADER)
        return given is not None and hmac.compare_digest(given, self._gateway_secret or b"")

    def _liveness(self, path: str) -> Reply:
        if path == "/v2/health/live":
            return json_reply(200 if self.live else 503, {"live": self.live})
        if self.live:
            seen = (REQUESTS_HEADER, str(self.requests_seen).encode())
            return Reply(200, [TEXT, seen], b"Healthy")
        return Reply(503, [TEXT], b"Unhealthy: run() calls that timed out still hold every thread")

    def _swagger(self, query: str) -> Reply:
        if self.swagger is None:
            return NOT_READY
        version = dict(parse_qsl(query)).get("version")
        document = self.swagger.for_query(version)
        if document is None:
            return json_reply(
                404, {"message": f"no swagger of version {version!r}: use 2, 3 or 3.1"}
            )
        return Reply(200, [JSON], document)

    def _score(self, request: HttpRequest, conn: Responder, rid: str, started: float) -> None:
        scorer, dispatcher = self.scorer, self.dispatcher
        refusal = self._refusal(request)
        if refusal is not None or scorer is None or dispatcher is None:
            self._send(request, conn, rid, started, "/score", refusal or NOT_READY)
            return
        span = self.tracing.start(request, rid, "/score") if self.tracing else None
        cid = self._collect_input(request, rid, request.body)

        def finish(outcome: Outcome) -> None:
            try:
                answer = self._scored(outcome, rid)
            except Exception as exc:  # e.g. a response object whose get_data() raises
                log.error("reply_failed", request_id=rid, exc_info=exc)
                answer = json_reply(500, {"message": f"cannot send run()'s answer: {exc}"})
            if cid is not None:
                self._collect_output(cid, rid, answer)
            self._send(request, conn, rid, started, "/score", answer, span)

        rows = self._batch_rows(request)
        if rows is not None and self.batcher is not None:
            self._queued(request, conn, self.batcher.submit(rows, finish, span))
            return
        try:
            call = scorer.prepare(request)
        except BadInput as exc:
            self.metrics.error("bad_input")
            reply = json_reply(400, {"message": str(exc)})
            if cid is not None:
                self._collect_output(cid, rid, None, reply)
            self._send(request, conn, rid, started, "/score", reply, span)
            return
        around = None  # run()'s span, outside what the dispatcher times as run()
        if span is not None:
            around = span.run_inside_async if scorer.is_async else span.run_inside
        self._queued(request, conn, dispatcher.submit(call, finish, around))

    def _queued(self, request: HttpRequest, conn: Responder, withdraw: Withdraw) -> None:
        """A request whose client goes away before its run() starts leaves the queue: it
        would otherwise hold a place (a 429 for a live request) and cost a run."""

        def gone() -> None:
            if withdraw():
                self.metrics.error("abandoned")

        conn.when_gone(request, gone)

    def _batch_rows(self, request: HttpRequest) -> list[Any] | None:
        """The rows of a request adaptive batching takes, else None."""
        if self.batcher is None or request.method != "POST":
            return None
        return batch_rows(request.body)

    def _oip(
        self,
        route: oip.OipRoute,
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
    ) -> None:
        if route.model not in self.oip_names:
            triton = self.triton  # looked at only here: other models' requests pay nothing
            if triton is not None and route.model == triton.name:
                self._triton(triton, route, request, conn, rid, started)
                return
            reply = self._no_model(route.model)
        elif route.action == "metadata":
            reply = Reply(200, [JSON], oip.model_metadata(self.model_name, self.model_path))
        elif route.action == "ready":
            reply = json_reply(200 if self.ready else 503, {"ready": self.ready})
        elif request.method != "POST":
            reply = json_reply(405, {"error": "inference needs POST"})
        else:
            self._rest_infer(request, conn, rid, started)
            return
        self._send(request, conn, rid, started, "/v2/infer", reply)

    def _no_model(self, model: str) -> Reply:
        this = repr(self.model_name)
        triton = self.triton
        if triton is not None and triton.name != self.model_name:
            this = f"{triton.name!r} (or {this})"
        return json_reply(404, {"error": f"no model {model!r}; this is {this}"})

    def _triton(
        self,
        model: TritonModel,
        route: oip.OipRoute,
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
    ) -> None:
        """OIP by the Triton model's own name: its version, its graph's tensors."""
        version = oip.version_of(request.path)
        if version is not None and version != model.version:
            message = f"model {model.name!r} has no version {version!r}; it serves {model.version}"
            reply = json_reply(404, {"error": message})
        elif route.action == "ready":
            reply = json_reply(200 if self.ready else 503, {"ready": self.ready})
        elif self.scorer is None:  # the graph's tensors are known once it is loaded
            reply = NOT_READY
        elif route.action == "metadata":
            reply = Reply(200, [JSON], model.metadata())
        elif request.method != "POST":
            reply = json_reply(405, {"error": "inference needs POST"})
        else:
            self._triton_infer(
                model,
                request,
                conn,
                rid,
                started,
                lambda: model.decode(request.body, request.header(oip_binary.HEADER)),
                lambda inference, arrays: _tensors_reply(model.answer(inference, arrays)),
            )
            return
        self._send(request, conn, rid, started, "/v2/infer", reply)

    def _triton_grpc(
        self,
        model: TritonModel,
        message: Any,  # the call's ModelInferRequest (protobuf stays in oip_grpc_http)
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
    ) -> None:
        """gRPC ModelInfer by the Triton model's name: the same checks and graph as REST,
        every output in `raw_output_contents`."""
        version = message.model_version
        if version and version != model.version:
            error = f"model {model.name!r} has no version {version!r}; it serves {model.version}"
            self._send(request, conn, rid, started, "/v2/infer", json_reply(404, {"error": error}))
            return

        def answer(inference: Inference, arrays: list[Any]) -> Reply:
            outputs = model.raw_outputs(inference, arrays)
            body = oip_grpc_http.tensors_answer(
                model.name, model.version, inference.request_id, outputs
            )
            return Reply(200, [oip_grpc_http.GRPC_TYPE], body)

        def decode() -> Inference:
            return model.checked(*oip_grpc_http.rest_request(message))

        self._triton_infer(model, request, conn, rid, started, decode, answer)

    def _triton_infer(
        self,
        model: TritonModel,
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
        decode: Callable[[], Inference],
        answer: Callable[[Inference, list[Any]], Reply],
    ) -> None:
        """An inference of the Triton model: the request's tensors checked against the graph
        here (`decode`), the graph run where run() runs (same limits, timeout and metrics),
        its outputs answered by `answer`."""
        if self._not_scoring(request, conn, rid, started):
            return
        dispatcher = self.dispatcher
        assert dispatcher is not None  # _not_scoring said so
        try:
            inference = decode()
        except oip.OipError as exc:
            self.metrics.error("bad_input")
            reply = json_reply(400, {"error": str(exc)})
            self._send(request, conn, rid, started, "/v2/infer", reply)
            return
        span = self.tracing.start(request, rid, "/v2/infer") if self.tracing else None
        cid = self._collect_input(request, rid, request.body)

        def finish(outcome: Outcome) -> None:
            if outcome.kind == "ok":
                self.metrics.observe_run(outcome.run_seconds)
                reply = answer(inference, outcome.value)
            else:
                reply = self._scored(outcome, rid)
            if cid is not None:
                self._collect_output(cid, rid, None, reply)
            self._send(request, conn, rid, started, "/v2/infer", reply, span)

        around = span.run_inside if span is not None else None
        self._queued(
            request, conn, dispatcher.submit(lambda: model.infer(inference), finish, around)
        )

    def _grpc_infer(self, request: HttpRequest, conn: Responder, rid: str, started: float) -> None:
        """gRPC ModelInfer, as the gateway's reverse bridge sends it (oip_grpc_http.py): the
        OIP inference of the same tensors, answered as a ModelInferResponse or a status."""
        answers = oip_grpc_http.StatusAnswers(conn)
        if self._not_scoring(request, answers, rid, started):
            return
        try:
            message = oip_grpc_http.infer_message(request.body)
        except oip_grpc_http.Refused as refused:
            self.metrics.error("bad_input")
            conn.respond(request, *oip_grpc_http.status_answer(refused))
            self.metrics.observe("/v2/infer", 400, time.perf_counter() - started)
            return
        model = message.model_name
        if model and model not in self.oip_names:
            triton = self.triton
            if triton is not None and model == triton.name:
                self._triton_grpc(triton, message, request, answers, rid, started)
                return
            self._send(request, answers, rid, started, "/v2/infer", self._no_model(model))
            return
        try:
            call = oip_grpc_http.call_of(message)
        except oip.OipError as exc:
            self.metrics.error("bad_input")
            reply = json_reply(400, {"error": str(exc)})
            self._send(request, answers, rid, started, "/v2/infer", reply)
            return

        def answer(value: Any) -> Reply:
            body = oip_grpc_http.answer(self.model_name, call, value)
            return Reply(200, [oip_grpc_http.GRPC_TYPE], body)

        # StatusAnswers stands in for the connection: respond() and when_gone() are all used.
        self._infer(request, answers, rid, started, call.infer, answer)

    def _grpc_method(self, request: HttpRequest, conn: Responder) -> None:
        """Another gRPC method, bridged like ModelInfer: answered by its REST twin."""
        try:
            method, twin = oip_grpc_http.twin_request(request)
        except oip_grpc_http.Refused as refused:
            conn.respond(request, *oip_grpc_http.status_answer(refused))
            return
        captured = oip_grpc_http.Captured()
        self.handle(twin, captured)
        assert captured.reply is not None, "a REST twin answers at once"
        conn.respond(request, *oip_grpc_http.twin_answer(method, *captured.reply))

    def _rest_infer(self, request: HttpRequest, conn: Responder, rid: str, started: float) -> None:
        """An OIP inference over REST: JSON tensors (or the binary extension) in and out."""
        if self._not_scoring(request, conn, rid, started):
            return
        try:
            infer = oip.request_body(request.body, request.header(oip_binary.HEADER))
        except oip.OipError as exc:
            self.metrics.error("bad_input")
            reply = json_reply(400, {"error": str(exc)})
            self._send(request, conn, rid, started, "/v2/infer", reply)
            return

        def answer(value: Any) -> Reply:
            tensors = oip.response_body(self.model_name, value, infer)
            if tensors.header_length is None:
                return Reply(200, [JSON], tensors.body)
            length = str(tensors.header_length).encode()
            return Reply(200, [OCTETS, (oip_binary.HEADER, length)], tensors.body)

        self._infer(request, conn, rid, started, infer, answer)

    def _not_scoring(self, request: HttpRequest, conn: Responder, rid: str, started: float) -> bool:
        """Answer an inference that cannot run now (not ready, draining...); True if so."""
        refusal = self._refusal(request)
        if refusal is None:
            return False
        self._send(request, conn, rid, started, "/v2/infer", refusal)
        return True

    def _infer(
        self,
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
        infer: oip.InferRequest,
        answer: Callable[[Any], Reply],
    ) -> None:
        """An OIP inference (REST or gRPC): its tensors as run()'s input, and `answer`
        turning run()'s (JSON) value into the protocol's answer."""
        scorer, dispatcher = self.scorer, self.dispatcher
        assert scorer is not None and dispatcher is not None  # _not_scoring said so
        span = self.tracing.start(request, rid, "/v2/infer") if self.tracing else None
        try:
            scored = HttpRequest("POST", b"/score", request.headers, infer.body, request.keep_alive)
            rows = self._batch_rows(scored)
            call = scorer.prepare(scored) if rows is None else None
        except BadInput as exc:
            self.metrics.error("bad_input")
            reply = json_reply(400, {"error": str(exc)})
            self._send(request, conn, rid, started, "/v2/infer", reply, span)
            return

        cid = self._collect_input(request, rid, infer.body)

        def finish(outcome: Outcome) -> None:
            scored = reply = self._scored(outcome, rid)
            if outcome.kind == "ok" and reply.status == 200:
                try:
                    extra = [h for h in reply.headers if h[0] != b"content-type"]
                    answered = answer(orjson.loads(reply.body))
                    reply = Reply(200, [*answered.headers, *extra], answered.body)
                except orjson.JSONDecodeError:
                    reply = json_reply(500, {"error": "run() did not answer JSON"})
                except oip.OipError as exc:
                    reply = json_reply(400, {"error": str(exc)})
            if cid is not None:  # run()'s answer, and the protocol's answer the client got
                self._collect_output(cid, rid, scored, reply)
            self._send(request, conn, rid, started, "/v2/infer", reply, span)

        if call is None:
            assert self.batcher is not None and rows is not None
            self._queued(request, conn, self.batcher.submit(rows, finish, span))
            return
        around = None  # run()'s span, outside what the dispatcher times as run()
        if span is not None:
            around = span.run_inside_async if scorer.is_async else span.run_inside
        self._queued(request, conn, dispatcher.submit(call, finish, around))

    def _collect_input(self, request: HttpRequest, rid: str, model_input: bytes) -> int | None:
        """Queue the input of a sampled request; its correlation id, or None when not sampled."""
        collector = self.collector
        if collector is None:
            return None
        cid = collector.sample()
        if cid is None:
            return None
        if collector.requests:
            where = {"method": request.method, "path": request.target.decode("latin-1")}
            collector.add("request", cid, rid, request.body, where)
        if collector.inputs:
            collector.add("model_inputs", cid, rid, model_input)
        return cid

    def _collect_output(
        self, cid: int, rid: str, answer: Reply | None, sent: Reply | None = None
    ) -> None:
        """Queue what run() answered (model_outputs: successes only; None: run() did not run)
        and the response the client got (`sent`, when it is not run()'s answer as it is)."""
        collector = self.collector
        assert collector is not None
        if collector.outputs and answer is not None and answer.status == 200:
            collector.add("model_outputs", cid, rid, answer.body)
        response = sent or answer
        if collector.responses and response is not None:
            collector.add("response", cid, rid, response.body, {"status": response.status})

    def _refusal(self, request: HttpRequest) -> Reply | None:
        """The answer when /score cannot run this request; None when it can."""
        if request.method == "OPTIONS":
            return Reply(200, [], b"")
        if request.method not in ("POST", "GET"):
            return json_reply(405, {"message": f"{request.method} is not allowed on /score"})
        if self.stopping:
            request.keep_alive = False  # and close: the client's next request goes elsewhere
            return SHUTTING_DOWN
        if self.scorer is None or self.dispatcher is None:
            return NOT_READY
        return None

    def _scored(self, outcome: Outcome, rid: str) -> Reply:
        limits = self.dispatcher.limits if self.dispatcher else None
        if outcome.kind == "ok":
            self.metrics.observe_run(outcome.run_seconds)
            try:
                reply = encode(outcome.value)
            except NotSerializable as exc:
                self.metrics.error("bad_output")
                log.error("run_output_not_serializable", request_id=rid, error=str(exc))
                return json_reply(500, {"message": str(exc)})
            reply.headers.append((b"x-ms-run-fn-exec-ms", b"%.3f" % (outcome.run_seconds * 1e3)))
            if not 200 <= reply.status < 300:
                reply.headers.append(MODEL_STATUS)  # run()'s own status: 424 at the gateway
                if reply.status >= 500:  # as Azure's server says of any 5xx run() returns
                    reply = _run_failed(reply)
            return reply
        if outcome.kind == "error":
            error = outcome.error
            if isinstance(error, BadInput):
                self.metrics.error("bad_input")
                return json_reply(400, {"message": str(error)})
            self.metrics.error("run_failed")
            log.error("run_failed", request_id=rid, exc_info=error)
            message = f"run() failed: {type(error).__name__}: {error}"
            reply = json_reply(500, {"message": message})
            reply.headers.append(RUN_FAILED)
            return reply
        if outcome.kind == "timeout":
            self.metrics.error("timeout")
            timeout_ms = limits.timeout_s * 1000 if limits else 0
            log.warning("run_timed_out", request_id=rid, timeout_ms=timeout_ms)
            return json_reply(408, {"message": f"run() did not finish within {timeout_ms:g} ms"})
        self.metrics.error("rejected")
        pending = limits.max_concurrent + limits.max_queue if limits else 0
        return json_reply(
            429, {"message": f"too many pending requests: {pending} already running or queued"}
        )

    def _send(
        self,
        request: HttpRequest,
        conn: Responder,
        rid: str,
        started: float,
        route: str,
        reply: Reply,
        span: LeanSpan | None = None,
    ) -> None:
        headers = [*reply.headers, (REQUEST_ID, rid.encode("latin-1")), *request.echoed]
        if span is not None and self.tracing is not None:
            self.tracing.answered(span, reply.status, rid, headers)
        conn.respond(request, reply.status, headers, reply.body)
        self.metrics.observe(route, reply.status, time.perf_counter() - started)
        if span is not None:
            span.end()  # after the answer left: the spans it may write do not delay it


def _tensors_reply(tensors: oip.InferAnswer) -> Reply:
    """An OIP answer: JSON, or JSON and then raw tensor data (binary tensor data extension)."""
    if tensors.header_length is None:
        return Reply(200, [JSON], tensors.body)
    length = str(tensors.header_length).encode()
    return Reply(200, [OCTETS, (oip_binary.HEADER, length)], tensors.body)


@functools.cache
def _too_long(header: bytes) -> Reply:
    message = f"{header.decode()} is longer than {MAX_REQUEST_ID} characters"
    return json_reply(431, {"message": message})  # as Azure's server answers it


def _run_failed(reply: Reply) -> Reply:
    headers = [h for h in reply.headers if h[0] != RUN_FAILED[0]]
    return Reply(reply.status, [*headers, RUN_FAILED], reply.body)


class RequestIds:
    """Unique request ids, cheaply: a random per-process prefix and a counter (uuid4 costs 2 us)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._count = itertools.count(1)

    def for_request(self, request: HttpRequest) -> str | Reply:
        """The caller's `x-request-id` when it has one, else a new id; and its
        `x-ms-client-request-id`, to echo (`request.echoed`). One of them longer than 100
        characters is refused with 431, as Azure's server does. One pass over the headers."""
        given: bytes | None = None
        client: bytes | None = None
        for key, value in request.headers:
            if key == REQUEST_ID and given is None:
                given = value
            elif key == CLIENT_REQUEST_ID and client is None:
                client = value
        for name, found in ((REQUEST_ID, given), (CLIENT_REQUEST_ID, client)):
            if found is not None and len(found) > MAX_REQUEST_ID:
                return _too_long(name)
        if client is not None:
            request.echoed = ((CLIENT_REQUEST_ID, client),)
        return given.decode("latin-1") if given else self.new()

    def new(self) -> str:
        return f"{self._prefix}-{next(self._count):08x}"


def load_scorer(config: ServerConfig, triton: TritonModel | None = None) -> Scorer:
    """Import the scoring script (or pick the built-in scorer: `triton`'s, when the model
    is a Triton repository), check it, and call init()."""
    set_model_dir(config.model)
    set_script_variables(config.code, config.scoring_script)
    script = config.script_path
    if script is not None:
        assert config.code is not None
        functions = load_script(script, config.code)
    else:
        assert config.model is not None
        functions = triton.functions() if triton is not None else builtin_scorer(config.model)
    scorer = Scorer(functions)
    log.info("init_started", script=functions.origin)
    started = time.perf_counter()
    if config.tracing:  # a trace of its own: the instance's start, not a request
        from sluice.inference.tracing import traced_init

        traced_init(scorer.init)
    else:
        scorer.init()
    log.info("init_finished", seconds=round(time.perf_counter() - started, 3))
    return scorer


def model_name(model: Path | None) -> str:
    """The model's name in OIP routes: the deployment's, else the model file's or folder's."""
    deployment = os.environ.get("AZUREML_DEPLOYMENT_NAME")
    if deployment:
        return deployment
    return model.stem if model is not None else "model"


async def serve(config: ServerConfig, registry: CollectorRegistry | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit code."""
    try:  # known before the server listens: its OIP name answers (not ready) during init()
        triton = triton_model(config.model) if config.script_path is None else None
    except ScriptError as exc:  # a Triton repository Sluice does not serve
        log.error("init_failed", error=str(exc))
        return EXIT_INIT_FAILED
    loop = asyncio.get_running_loop()
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, scope_from_env())
    if config.metrics_port and config.listen_fd is None:
        serve_metrics(config.host, config.metrics_port, registry)
    app = InferenceApp(metrics, model_name(config.model), config.gateway_secret)
    app.model_path = config.model
    if triton is not None:
        app.serve_triton(triton)
    app.collector = _collector(config, metrics)
    if app.collector is not None:
        _configure_azure_collector(config)
    if config.tracing:
        from sluice.inference.tracing import start_tracing

        app.tracing = start_tracing(config, scope_from_env())
    server = await loop.create_server(
        lambda: Connection(app.handle, config.max_payload_bytes),
        sock=_listening_socket(config),
        backlog=2048,
    )
    grpc_server = None
    if config.grpc_port:
        from sluice.inference.oip_grpc import start_server

        grpc_server = await start_server(
            app, config.host, config.grpc_port, config.max_payload_bytes
        )
    log.info(
        "listening",
        address=f"http://{config.host}:{config.port}",
        grpc_port=config.grpc_port or None,
        metrics_port=config.metrics_port or None,
        model_dir=_model_dir_text(config.model),
    )
    stop = loop.create_task(wait_for_shutdown_signal())
    init = loop.run_in_executor(None, contextvars.copy_context().run, load_scorer, config, triton)
    first: list[asyncio.Future[Any]] = [stop, init]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not init.done():
        log.info("stopped_during_init")
        if grpc_server is not None:
            await grpc_server.stop(0)
        return 0
    try:
        scorer = init.result()
    except BaseException as exc:
        log.error("init_failed", exc_info=exc)
        server.close()
        if grpc_server is not None:
            await grpc_server.stop(0)
        stop.cancel()
        return EXIT_INIT_FAILED
    limits = Limits(
        max_concurrent=config.max_concurrent_requests,
        max_queue=config.max_queue,
        timeout_s=config.request_timeout_ms / 1000,
    )
    dispatcher = Dispatcher(limits, is_async=scorer.is_async)
    dispatcher.on_in_flight = metrics.track_in_flight(lambda: dispatcher.in_flight)
    trace_batch = app.tracing.batch_run if app.tracing is not None else None
    batcher = _batcher(config, scorer, dispatcher, metrics, trace_batch)
    swagger = swagger_documents(config.code, scorer.swagger_schema())
    app.start_scoring(scorer, dispatcher, swagger, batcher)
    # What init() loaded lives as long as the process: keep it out of the garbage
    # collector's scans, which otherwise walk the whole model on every full collection.
    gc.freeze()
    log.info("ready", limits=str(limits))
    await stop
    await _drain(app, server, dispatcher, limits.timeout_s)
    if grpc_server is not None:  # its calls in flight were the dispatcher's: all answered
        await grpc_server.stop(1)
    if app.collector is not None:
        app.collector.close()
    if app.tracing is not None:  # the last requests' spans, before os._exit
        from sluice.common.tracing import shutdown

        shutdown()
    return 0


def _configure_azure_collector(config: ServerConfig) -> None:
    """A score.py written for Azure collects through `azureml-ai-monitoring`'s `Collector`
    (`Collector(name="model_inputs").collect(df)`), which refuses to start unless its
    configuration enables the collection. Sluice's collector already writes the enabled
    collections from each request and answer, so the package is configured as Azure's
    local runs configure it (`runMode: local`: it logs instead of sending to a sidecar):
    the script runs unchanged and nothing is collected twice."""
    if "AZUREML_MDC_CONFIG_PATH" in os.environ:
        return
    percent = round(config.collect_sampling_rate * 100, 3)
    settings = {
        "collections": {
            name: {"enabled": True, "sampleRatePercentage": percent} for name in config.collect
        },
        "runMode": "local",
    }
    handle, path = tempfile.mkstemp(prefix="sluice-mdc-config-", suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump(settings, out)
    os.environ["AZUREML_MDC_CONFIG_PATH"] = path


def _collector(config: ServerConfig, metrics: Metrics) -> CollectorFeed | None:
    """The deployment's data collector, started; None when nothing is collected."""
    if config.collect_dir is None or not config.collect:
        return None
    instance = os.environ.get("SLUICE_INSTANCE_ID") or uuid.uuid4().hex[:8]
    if config.listen_fd is not None:  # one of several worker processes: a file each
        instance = f"{instance}-{os.getpid()}"
    endpoint, deployment = scope_from_env()
    source = f"/onlineEndpoints/{endpoint}/deployments/{deployment}"
    settings = CollectorSettings(
        folder=config.collect_dir,
        collections=frozenset(config.collect),
        sampling_rate=config.collect_sampling_rate,
        rolling_rate=config.collect_rolling_rate,
        max_bytes=config.collect_max_bytes,
        instance=instance,
        source=source,
    )
    collector = CollectorFeed(settings, metrics.dropped)
    try:
        collector.start()
    except OSError as exc:  # scoring goes on; the log says why nothing is collected
        log.error("collector_unavailable", folder=str(config.collect_dir), error=str(exc))
        return None
    return collector


def _batcher(
    config: ServerConfig,
    scorer: Scorer,
    dispatcher: Dispatcher,
    metrics: Metrics,
    trace: TraceBatch | None,
) -> Batcher | None:
    """Adaptive batching when the deployment asks for it and its run() takes batches."""
    if config.max_batch_size <= 1:
        return None
    if not scorer.batchable:
        log.warning(
            "batching_off",
            reason="run() does not declare BATCHABLE = True (or takes raw requests, "
            "schema arguments or headers)",
        )
        return None
    settings = BatchSettings(config.max_batch_size, config.max_batch_wait_ms / 1000)
    log.info("batching_on", max_batch_size=settings.max_size, max_wait_s=settings.max_wait_s)
    return Batcher(settings, dispatcher, scorer.functions.run, metrics.batch_rows.observe, trace)


async def _drain(
    app: InferenceApp, server: asyncio.Server, dispatcher: Dispatcher, timeout_s: float
) -> None:
    """Stop taking requests and let those in flight finish (at most one request timeout)."""
    app.stopping = True
    server.close()
    await dispatcher.wait_idle(timeout_s)
    dispatcher.shutdown()
    log.info("stopped", unfinished=dispatcher.in_flight)


def _listening_socket(config: ServerConfig) -> socket.socket:
    if config.listen_fd is not None:
        return socket.socket(fileno=config.listen_fd)
    return bind_socket(config.host, config.port)


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _model_dir_text(model: Path | None) -> str | None:
    return str(model.resolve().parent) if model is not None else None
