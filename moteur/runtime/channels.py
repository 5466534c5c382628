"""Channels to the other services of the mesh, and the metadata every outgoing call carries.

Retries: the channel's service config retries UNAVAILABLE for the methods listed below, which are safe to
repeat (reads, and deletions: deleting again deletes nothing more). Model calls are not retried on a status
because the router does its own retries and fallbacks, and a second attempt would double a slow, paid call —
but a call that could not even connect (the peer is restarting) never reached it, so :func:`reconnecting`
retries those briefly. Reconnection backoff is kept short so a restarted peer is used again within a second.

Balancing: a channel spreads its calls over every address its target resolves to (``round_robin``): in a
cluster the target is ``dns:///<service>-headless:50051``, whose name resolves to every ready pod; servers
close connections after ``max_connection_age`` (moteur.runtime.server), so clients resolve again and new pods
get traffic.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc
import structlog
import tenacity

from moteur.runtime.context import request_id_var
from moteur.runtime.errors import MoteurError, from_rpc_error
from moteur.runtime.identity import REQUEST_ID_HEADER, Identity
from moteur.runtime.tls import TlsSettings
from moteur.runtime.tracing import inject_context

_SAFE_TO_REPEAT = [
    {"service": "moteur.v1.Router", "method": "ListModels"},
    {"service": "moteur.v1.Memory", "method": "Embed"},
    {"service": "moteur.v1.Memory", "method": "Search"},
    {"service": "moteur.v1.Memory", "method": "List"},
    {"service": "moteur.v1.Memory", "method": "FactHistory"},
    {"service": "moteur.v1.Memory", "method": "Delete"},
    {"service": "moteur.v1.Files", "method": "GetFile"},
    {"service": "moteur.v1.Files", "method": "ListFiles"},
    {"service": "moteur.v1.Files", "method": "ListTemplates"},
    {"service": "moteur.v1.Tools", "method": "ListTools"},
]

SERVICE_CONFIG = json.dumps(
    {
        # Every address the name resolves to (a headless Service's pods, or a static ipv4: list) gets calls in
        # turn; grpc's default, pick_first, would hold one connection to one pod for ever.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": _SAFE_TO_REPEAT,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(address: str, max_message_bytes: int = 8 * 1024 * 1024,
                 tls: TlsSettings | None = None) -> grpc.aio.Channel:
    """A channel to another service: TLS when this service has certificates (see moteur.runtime.tls)."""
    tls = tls or TlsSettings()
    options = [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if tls.enabled:
        return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(address, options=options)


log = structlog.get_logger(__name__)
# A peer's answer with one of these is the mesh failing, not the caller's mistake: worth a line.
_MESH_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def _passed_on(exc: grpc.aio.AioRpcError, service: str) -> MoteurError:
    """The status to answer our caller with; a failure of the mesh is logged with the transport's words
    (e.g. "Socket closed"), which the caller's message does not carry."""
    if exc.code() in _MESH_FAILURES:
        log.warning("mesh.call_failed", peer=service, code=exc.code().name, details=exc.details())
    return from_rpc_error(exc, service)


def _never_connected(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() is grpc.StatusCode.UNAVAILABLE
        and "connect" in (exc.details() or "").lower()
    )


def reconnecting(budget_seconds: float = 2.0) -> tenacity.AsyncRetrying:
    """Retry a call for up to ``budget_seconds`` while its peer cannot be connected to (safe: it never ran)."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(_never_connected),
        wait=tenacity.wait_exponential(multiplier=0.05, max=0.5),
        stop=tenacity.stop_after_delay(budget_seconds),
        reraise=True,
    )


async def call_service(
    method: Callable[..., grpc.aio.UnaryUnaryCall], request: Any, service: str, identity: Identity, timeout: float
) -> Any:
    """A unary call to another service of the mesh for ``identity``; a failure becomes the status to pass
    on to our own caller (see :func:`from_rpc_error`). A peer that cannot be connected to (restarting, or
    the channel still backing off after it came back) is tried again within the call's own time."""
    response, _ = await call_service_with_trailers(method, request, service, identity, timeout)
    return response


async def call_service_with_trailers(
    method: Callable[..., grpc.aio.UnaryUnaryCall], request: Any, service: str, identity: Identity, timeout: float
) -> tuple[Any, grpc.aio.Metadata]:
    """:func:`call_service`, also returning the call's trailing metadata (e.g. the router's registry revision)."""
    try:
        async for attempt in reconnecting(budget_seconds=min(2.0, timeout)):
            with attempt:
                call = method(request, metadata=mesh_metadata(identity), timeout=timeout)
                response = await call
                return response, await call.trailing_metadata()
    except grpc.aio.AioRpcError as exc:
        raise _passed_on(exc, service) from exc
    raise AssertionError("unreachable: reconnecting() re-raises its last error")


async def stream_service(
    method: Callable[..., grpc.aio.UnaryStreamCall], request: Any, service: str, identity: Identity, timeout: float,
    on_trailers: Callable[[grpc.aio.Metadata], None] | None = None,
) -> AsyncGenerator[Any, None]:
    """The responses of a server-streaming call to another service of the mesh for ``identity``, with the rules
    of :func:`call_service`: a peer that cannot be connected to is tried again, but only until the first
    response arrives (a stream that started is never replayed); a failure becomes the status to pass on.
    ``on_trailers`` is told the trailing metadata once the stream ended well. Closing the iterator early
    cancels the call."""
    call: grpc.aio.UnaryStreamCall | None = None
    try:
        async for attempt in reconnecting(budget_seconds=min(2.0, timeout)):
            with attempt:
                if call is not None:
                    call.cancel()
                call = method(request, metadata=mesh_metadata(identity), timeout=timeout)
                response = await call.read()
        assert call is not None
        while response is not grpc.aio.EOF:
            yield response
            response = await call.read()
        if on_trailers is not None:
            on_trailers(await call.trailing_metadata())
    except grpc.aio.AioRpcError as exc:
        raise _passed_on(exc, service) from exc
    finally:
        if call is not None:
            call.cancel()


def mesh_metadata(identity: Identity) -> list[tuple[str, str]]:
    """The signed identity, request id and trace context for a call from one service to another."""
    return [*identity.as_metadata(), (REQUEST_ID_HEADER, request_id_var.get()), *inject_context()]
