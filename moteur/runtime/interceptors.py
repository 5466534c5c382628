"""The one server interceptor: request id, trace span, structured log line, metrics, the mesh identity check,
request decoding and error mapping.

It wraps each handler's behaviour rather than stacking several interceptors, because every layer of
grpc.aio interception costs a few microseconds on the hot path and these concerns share one timer.

Before any handler of an internal service runs, the call's mesh token is verified and its scopes checked
(see :mod:`moteur.runtime.mesh_tokens`); the handler reads the identity from the checked token only. The
request is decoded here, not in grpc's own path, so that malformed bytes become INVALID_ARGUMENT with a
log line like any other refusal (see :mod:`moteur.runtime.requests`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from moteur.runtime import context as call_context
from moteur.runtime.errors import MoteurError, PermissionDenied, Unauthenticated, Unavailable, to_grpc_status
from moteur.runtime.identity import REQUEST_ID_HEADER, TOKEN_HEADER, identity_var, metadata_value
from moteur.runtime.ids import new_id
from moteur.runtime.logging import exception_summary
from moteur.runtime.mesh_tokens import MeshTokenVerifier
from moteur.runtime.metrics import MESH_AUTH_REFUSED, RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS
from moteur.runtime.requests import Decode, decoder
from moteur.runtime.tracing import extract_context

log = structlog.get_logger("moteur.rpc")
_tracer = trace.get_tracer("moteur.rpc")

# Calls that are infrastructure, not traffic: not logged at info level.
_QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def translate_exception(exc: BaseException) -> MoteurError | None:
    """Store failures from libraries become UNAVAILABLE with a readable message; others stay unknown."""
    import pymongo.errors
    import redis.exceptions

    if isinstance(exc, MoteurError):
        return exc
    if isinstance(exc, pymongo.errors.ClientBulkWriteException) and exc.error is not None:
        exc = exc.error  # a connection lost during a multi-collection write comes wrapped
    if isinstance(exc, pymongo.errors.ConnectionFailure | pymongo.errors.ServerSelectionTimeoutError):
        return Unavailable("the session store (MongoDB) is unreachable; retry shortly")
    if isinstance(exc, redis.exceptions.ConnectionError):
        return Unavailable("the limits store (Redis) is unreachable; retry shortly")
    return None


@dataclass(frozen=True, slots=True)
class MeshGuard:
    """How an internal service admits calls: the verifier of its audience and the scope each method needs."""

    service: str
    verifier: MeshTokenVerifier
    scopes: Mapping[str, str]  # method name -> required scope

    def admit(self, method: str, metadata: Any) -> None:
        token = metadata_value(metadata, TOKEN_HEADER)
        if not token:
            MESH_AUTH_REFUSED.labels(self.service, "missing").inc()
            raise Unauthenticated(f"missing mesh token ({TOKEN_HEADER}): internal services are called through "
                                  "the gateway, which signs the caller's identity")
        try:
            identity = self.verifier.verify(token)
        except Unauthenticated:
            MESH_AUTH_REFUSED.labels(self.service, "invalid").inc()
            raise
        needed = self.scopes.get(method)
        if needed is None or needed not in identity.scopes:
            MESH_AUTH_REFUSED.labels(self.service, "scope").inc()
            raise PermissionDenied(f"this call's identity may not call {method} (needs scope {needed!r})")
        identity_var.set(identity)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, guard: MeshGuard | None = None) -> None:
        """``guard``: None for the public gateway, which authenticates API keys itself."""
        self._service = service
        self._guard = guard
        # The wrapped handler of each method, built once: grpc asks for it on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        full_method: str = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[full_method] = self._wrap(full_method, handler)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # The request arrives as bytes (no deserializer given to grpc) and is decoded inside the call.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(full_method, handler.unary_unary, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                # An asyncio server's handlers are async generator functions; the stubs know the threaded server's.
                self._wrap_stream(full_method, cast(Callable[..., AsyncIterator[Any]], handler.unary_stream),
                                  handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming and bidi calls are not part of the v1 API

    def _admission(self, method: _Method, deserializer: Any) -> Callable[[bytes, Any], Any]:
        """What runs before the handler: the mesh guard (internal services), then decoding and checks."""
        decode: Decode = decoder(deserializer)
        guard = None if method.quiet else self._guard

        def admit(raw: bytes, metadata: Any) -> Any:
            if guard is not None:
                guard.admit(method.name, metadata)
            return decode(raw)

        return admit

    def _wrap_unary(self, full_method: str, behavior: Callable[..., Awaitable[Any]],
                    deserializer: Any) -> Callable[..., Any]:
        method = _Method(self._service, full_method)
        admit = self._admission(method, deserializer)

        async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, context)
            with call:
                try:
                    return await behavior(admit(raw, call.metadata), context)
                except BaseException as exc:  # every outcome is recorded, then re-raised
                    await call.fail(exc)
                    raise

        return unary

    def _wrap_stream(self, full_method: str, behavior: Callable[..., AsyncIterator[Any]],
                     deserializer: Any) -> Callable[..., Any]:
        method = _Method(self._service, full_method)
        admit = self._admission(method, deserializer)

        async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, context)
            with call:
                try:
                    async for message in behavior(admit(raw, call.metadata), context):
                        yield message
                except BaseException as exc:
                    await call.fail(exc)
                    raise

        return stream


class _Method:
    """What every call of one method shares: its names, span attributes and metric series, looked up once."""

    def __init__(self, service: str, full_method: str) -> None:
        self.service = service
        self.name = full_method.rsplit("/", 1)[-1]
        self.span_name = full_method.lstrip("/")
        self.span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": self.name}
        self.quiet = full_method.startswith(_QUIET_PREFIXES)
        self.in_flight = RPC_IN_FLIGHT.labels(service, self.name)
        self._outcomes: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def outcome(self, code: grpc.StatusCode) -> tuple[Any, Any]:
        """The latency histogram and the request counter of calls that ended with ``code``."""
        series = self._outcomes.get(code)
        if series is None:
            series = self._outcomes[code] = (RPC_LATENCY.labels(self.service, self.name, code.name),
                                             RPC_REQUESTS.labels(self.service, self.name, code.name))
        return series


class _Call:
    """Book-keeping of one RPC: binds its context, then records its outcome once."""

    def __init__(self, method: _Method, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.code = grpc.StatusCode.OK

    def __enter__(self) -> _Call:
        metadata = self.metadata = self.context.invocation_metadata()
        self.request_id = metadata_value(metadata, REQUEST_ID_HEADER) or new_id()
        remaining: float | None = self.context.time_remaining()  # None: the call has no deadline
        self.started = time.perf_counter()
        self._tokens = (
            call_context.request_id_var.set(self.request_id),
            call_context.deadline_var.set(None if remaining is None else time.monotonic() + remaining),
            identity_var.set(None),
        )
        structlog.contextvars.bind_contextvars(request_id=self.request_id, method=self.method.name)
        self._span = _tracer.start_as_current_span(
            self.method.span_name, context=extract_context(metadata), kind=SpanKind.SERVER,
            attributes=self.method.span_attributes,
        )
        self.span = self._span.__enter__()
        self.method.in_flight.inc()
        return self

    async def fail(self, exc: BaseException) -> None:
        """Map the exception to a status and abort the call with it (grpc raises to unwind)."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(exc, grpc.aio.AbortError):  # the handler aborted with its own status
            code: grpc.StatusCode | None = self.context.code()  # None if the abort set none
            self.code = code or grpc.StatusCode.UNKNOWN
            return
        error = translate_exception(exc)
        if error is not None and error is not exc:  # a store's failure: which one and where, not its words
            log.warning("rpc.store_failed", code=error.code.name, **exception_summary(exc))
        if error is None:
            # The type and where it was raised, never its message or locals: they may hold user text.
            log.error("rpc.unhandled_error", **exception_summary(exc))
            error = MoteurError(f"internal error; quote request id {self.request_id} when reporting it")
        self.code = error.code
        self.span.set_attribute("moteur.error", error.message)
        status = to_grpc_status(error)
        # Keep what the handler already set (e.g. the remaining rate-limit budget) beside the details.
        trailing = (*(self.context.trailing_metadata() or ()), *error.metadata, *status.trailing_metadata)
        await self.context.abort(status.code, status.details, trailing)

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self.started
        self.method.in_flight.dec()
        latency, requests = self.method.outcome(self.code)
        latency.observe(elapsed)
        requests.inc()
        if self.code is not grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, self.code.name))
        self.span.set_attribute("rpc.grpc.status_code", self.code.value[0])
        self._span.__exit__(None, None, None)
        if not self.method.quiet or self.code is not grpc.StatusCode.OK:
            trace_id = format(self.span.get_span_context().trace_id, "032x")
            identity = identity_var.get()
            log.info("rpc", code=self.code.name, ms=round(elapsed * 1000, 2), trace_id=trace_id,
                     tenant=identity.tenant if identity else None, user=identity.user if identity else None)
        structlog.contextvars.unbind_contextvars("request_id", "method")
        call_context.request_id_var.reset(self._tokens[0])
        call_context.deadline_var.reset(self._tokens[1])
        identity_var.reset(self._tokens[2])
