"""gRPC aio server bootstrap shared by every Sluice service.

Gives each service: the standard health service (grpc.health.v1), server
reflection, Prometheus counts and timings of every call (method, code), an
interceptor that binds a correlation id and logs each call,
optional bearer-token authentication, and a graceful stop.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pymongo.errors import ConnectionFailure

from sluice.common.headers import DEPENDENCY_DOWN_KEY
from sluice.common.log import bind_correlation_id, get_logger
from sluice.common.pki import Identity
from sluice.common.prometheus import GRPC_CALLS, GRPC_SECONDS

CORRELATION_HEADER = "x-correlation-id"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
ACTOR_KEY = "actor"
# DEPENDENCY_DOWN_KEY (trailing metadata) names a dependency the service cannot reach;
# clients show the answer's message as it is. A negative grpc-retry-pushback-ms tells a
# client's retry policy (gRFC A6) not to retry: the service already waited for it.
DATABASE_DOWN = (
    "the platform's database (MongoDB-compatible server) is not reachable; nothing was "
    "changed. Check `sluice status` (the supervisor restarts it) and retry"
)
# Methods anyone may call: load balancers and grpcurl need them without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

log = get_logger(__name__)

# grpc ships no type stubs: its handler objects are typed as Any.
Handler: TypeAlias = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _wrap(handler: Handler, around: Callable[[Any], Any]) -> Handler:
    """Rebuild `handler` with each behaviour passed through `around`."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            around(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            around(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            around(handler.stream_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        around(handler.stream_stream),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _is_streaming_response(handler: Handler) -> bool:
    return bool(handler.unary_stream or handler.stream_stream)


class CorrelationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Binds `x-correlation-id` (or a new one) for the call and logs its outcome."""

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        method = details.method
        cid = _metadata(details).get(CORRELATION_HEADER)

        def around(behaviour: Any) -> Any:
            if _is_streaming_response(handler):

                async def streaming(
                    request: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    with structlog.contextvars.bound_contextvars():
                        bind_correlation_id(cid)
                        started = time.perf_counter()
                        try:
                            async for item in behaviour(request, context):
                                yield item
                        finally:
                            _log_call(method, context, started)

                return streaming

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with structlog.contextvars.bound_contextvars():
                    bind_correlation_id(cid)
                    started = time.perf_counter()
                    try:
                        return await behaviour(request, context)
                    except ConnectionFailure as exc:  # ServerSelectionTimeout, AutoReconnect...
                        log.warning("database_unreachable", method=method, error=str(exc))
                        context.set_trailing_metadata(
                            ((DEPENDENCY_DOWN_KEY, "mongodb"), (RETRY_PUSHBACK_KEY, "-1"))
                        )
                        await context.abort(grpc.StatusCode.UNAVAILABLE, DATABASE_DOWN)
                    finally:
                        _log_call(method, context, started)

            return unary

        return _wrap(handler, around)


def _log_call(method: str, context: grpc.aio.ServicerContext, started: float) -> None:
    code = context.code()
    name = code.name if isinstance(code, grpc.StatusCode) else "OK"
    log.info(
        "grpc_call", method=method, code=name, ms=round((time.perf_counter() - started) * 1000, 2)
    )


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every call of the server it is installed on."""

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        def done(context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
            code = "UNKNOWN" if failed and _code_name(context) == "OK" else _code_name(context)
            GRPC_CALLS.labels(method, code).inc()
            GRPC_SECONDS.labels(method).observe(time.perf_counter() - started)

        def around(behaviour: Any) -> Any:
            if _is_streaming_response(handler):

                async def streaming(
                    request: Any, context: grpc.aio.ServicerContext
                ) -> AsyncIterator[Any]:
                    started, failed = time.perf_counter(), True
                    try:
                        async for item in behaviour(request, context):
                            yield item
                        failed = False
                    finally:
                        done(context, started, failed)

                return streaming

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    result = await behaviour(request, context)
                    failed = False
                    return result
                finally:
                    done(context, started, failed)

            return unary

        return _wrap(handler, around)


@dataclass(frozen=True)
class Verdict:
    """A token verifier's answer: who called (allowed), or the status and why (refused)."""

    actor: str | None = None
    code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
    message: str = ""
    # Whether the caller may read logs (a reader may not): a status message's log tail is
    # shown only then (sluice.common.access.status_for_caller).
    reads_logs: bool = True


# (token, full method name) -> verdict: a service's own tokens (the registry's user tokens).
TokenVerifier = Callable[[str, str], Awaitable[Verdict]]
# The caller a verifier named, for `actor_of` during the call.
CALLER: ContextVar[str | None] = ContextVar("sluice_caller", default=None)
# Whether that caller may read logs; True outside a user token's call (the admin token,
# mutual TLS peers, the services' own work).
CALLER_READS_LOGS: ContextVar[bool] = ContextVar("sluice_caller_reads_logs", default=True)


def caller_reads_logs() -> bool:
    """May the current call's caller read logs (what scoring code printed)?"""
    return CALLER_READS_LOGS.get()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without `authorization: Bearer <token>` with UNAUTHENTICATED.

    Health and reflection stay open. The admin token allows every call, and the
    caller's identity (`actor` metadata, default "admin") is only trusted once it
    matched. Any other token goes to `verifier` when there is one, which allows the
    call as a named caller (the actor of what it does, whatever the metadata says) or
    refuses it with its own status (e.g. PERMISSION_DENIED for a role).
    """

    def __init__(
        self, token: str, public: Sequence[str] = (), verifier: TokenVerifier | None = None
    ):
        if not token:
            raise ValueError("an admin token is required")
        self._expected = f"Bearer {token}".encode()
        self._public = (*PUBLIC_PREFIXES, *public)
        self._verifier = verifier

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._public):
            return handler
        given = _metadata(details).get("authorization", "").encode()
        if hmac.compare_digest(given, self._expected):
            return handler
        if self._verifier is not None and given.startswith(b"Bearer "):
            verdict = await self._verifier(given.removeprefix(b"Bearer ").decode(), details.method)
            if verdict.actor:
                return _wrap(handler, lambda behaviour: _as_caller(handler, behaviour, verdict))
            return _wrap(handler, lambda _: _deny(handler, verdict.code, verdict.message))
        reason = "missing credentials" if not given else "invalid credentials"
        return _wrap(
            handler,
            lambda _: _deny(handler, grpc.StatusCode.UNAUTHENTICATED, _deny_message(reason)),
        )


def _as_caller(handler: Handler, behaviour: Any, verdict: Verdict) -> Any:
    """`behaviour` with CALLER (and CALLER_READS_LOGS) set from the verdict while it runs."""
    if _is_streaming_response(handler):

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            reset = CALLER.set(verdict.actor)
            reset_logs = CALLER_READS_LOGS.set(verdict.reads_logs)
            try:
                async for item in behaviour(request, context):
                    yield item
            finally:
                CALLER_READS_LOGS.reset(reset_logs)
                CALLER.reset(reset)

        return streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        reset = CALLER.set(verdict.actor)
        reset_logs = CALLER_READS_LOGS.set(verdict.reads_logs)
        try:
            return await behaviour(request, context)
        finally:
            CALLER_READS_LOGS.reset(reset_logs)
            CALLER.reset(reset)

    return unary


def _deny(handler: Handler, code: grpc.StatusCode, message: str) -> Any:
    if _is_streaming_response(handler):

        async def deny_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # pragma: no cover - abort raises

        return deny_stream

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return deny


def _deny_message(reason: str) -> str:
    return (
        f"{reason}: send 'authorization: Bearer <admin token>' "
        "(the token `sluice up` wrote to <state dir>/admin-token)"
    )


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    """The call's first text metadata `key` (an HTTP header through the transcoder),
    stripped; "" when absent."""
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value.strip()
    return ""


def actor_of(context: grpc.aio.ServicerContext) -> str:
    """Who made the call, for the audit trail: a user token's user, else the `actor`
    metadata the SDK sets from the user name (trusted from admin-token holders)."""
    return CALLER.get() or metadata_value(context, ACTOR_KEY) or "admin"


def peer_name(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the caller's verified client certificate (mutual TLS), else None."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode() if names else None


class GrpcServer:
    """A grpc.aio server with health, reflection and Sluice's interceptors."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        admin_token: str | None = None,
        public_services: Sequence[str] = (),
        token_verifier: TokenVerifier | None = None,
        extra_interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
        tls: Identity | None = None,
        max_message_bytes: int | None = None,
        unauthenticated: bool = False,
    ):
        """`public_services` need no admin token (besides health and reflection).
        Without an admin token or `tls` a server would answer anyone: it refuses to be
        made unless `unauthenticated` says that is meant (a test's, a benchmark's).
        `max_message_bytes` raises gRPC's 4 MiB limit on a received message.

        With `tls`, the port speaks TLS with that identity and requires a client
        certificate signed by its CA (mutual TLS): for callers that cannot send a token,
        such as Envoy's xDS and access-log streams. `peer_name(context)` is then the
        caller's certificate name."""
        if not admin_token and tls is None and not unauthenticated:
            raise RuntimeError(
                "SLUICE_ADMIN_TOKEN is not set: without it this service would answer anyone "
                "(`sluice up` sets it; compose and Kubernetes read it from their secrets)"
            )
        interceptors: list[grpc.aio.ServerInterceptor] = [
            GrpcMetricsInterceptor(),
            CorrelationInterceptor(),
        ]
        if admin_token:
            public = [f"/{name}/" for name in public_services]
            interceptors.append(BearerTokenInterceptor(admin_token, public, token_verifier))
        interceptors.extend(extra_interceptors)
        options = [("grpc.max_receive_message_length", max_message_bytes)]
        self._server = grpc.aio.server(
            interceptors=interceptors, options=options if max_message_bytes else None
        )
        self._health = health.aio.HealthServicer()
        self._service_names = list(service_names)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        register(self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        if tls is None:
            self.port = self._server.add_insecure_port(f"{host}:{port}")
        else:
            chain, key, ca = tls.read()
            credentials = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=ca, require_client_auth=True
            )
            self.port = self._server.add_secure_port(f"{host}:{port}", credentials)
        if self.port == 0:
            raise OSError(f"could not bind gRPC port {host}:{port}")
        self.address = f"{host}:{self.port}"

    async def start(self) -> None:
        await self._server.start()
        for name in ["", *self._service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc_server_started", address=self.address, services=self._service_names)

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report one more health `service` (e.g. "a gateway is connected") as up or down."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set(service, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then stop."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        log.info("grpc_server_stopped", address=self.address)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
