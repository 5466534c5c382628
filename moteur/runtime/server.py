"""The grpc.aio server bootstrap every service runs: health, reflection, metrics, graceful drain.

A service describes itself as a :class:`ServiceApp` — its name and an async generator that opens its
dependencies, yields the servicers to register and closes them after the drain — and calls :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from moteur.runtime.errors import not_built_yet
from moteur.runtime.interceptors import ObservabilityInterceptor
from moteur.runtime.logging import configure_logging
from moteur.runtime.metrics import serve_metrics
from moteur.runtime.settings import ServerSettings
from moteur.runtime.tracing import configure_tracing

log = structlog.get_logger("moteur.server")


@dataclass(frozen=True)
class Registration:
    """One proto service to serve: its descriptor and the generated ``add_*_to_server`` bound to a servicer."""

    descriptor: ServiceDescriptor
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    on_drain: Callable[[], object] | None = None  # called when draining starts, before in-flight calls end


# An async generator: opens what the service needs, yields its registrations, closes on the way out.
Build = Callable[[], AsyncIterator[Sequence[Registration]]]


@dataclass(frozen=True)
class ServiceApp:
    name: str  # "gateway", "router", …: labels metrics, logs and traces
    build: Build


async def serve(app: ServiceApp, settings: ServerSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (SIGTERM/SIGINT set it when run from :func:`run`), then drain."""
    stop = stop or asyncio.Event()
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    async with contextlib.asynccontextmanager(app.build)() as registrations:
        server = grpc.aio.server(interceptors=[ObservabilityInterceptor(app.name)], options=options)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [r.descriptor.full_name for r in registrations]
        for registration in registrations:
            registration.add_to_server(registration.servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{settings.listen_host}:{settings.grpc_port}"
        if server.add_insecure_port(address) == 0:
            raise RuntimeError(f"cannot listen on {address}")
        await server.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("server.started", address=address, services=names, metrics_port=settings.metrics_port)
        await stop.wait()
        # Drain: report NOT_SERVING so load balancers stop sending, then let in-flight calls finish.
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for registration in registrations:
            if registration.on_drain is not None:
                registration.on_drain()
        log.info("server.draining", grace_seconds=settings.drain_seconds)
        await server.stop(settings.drain_seconds)
        log.info("server.stopped")


def run(app: ServiceApp, settings: ServerSettings | None = None) -> None:
    """Entry point of ``python -m moteur.<service>``."""
    settings = settings or ServerSettings()
    configure_logging(app.name, settings.log_level, settings.log_format)
    configure_tracing(app.name, settings.otlp_endpoint)
    serve_metrics(settings.metrics_port, settings.listen_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(app, settings, stop)

    asyncio.run(main())


def not_built_servicer(descriptor: ServiceDescriptor, base: type, issue: str) -> Any:
    """A servicer whose every RPC answers UNIMPLEMENTED naming the issue that brings it."""

    def placeholder(name: str, streaming: bool) -> Callable[..., Any]:
        error = not_built_yet(f"{descriptor.name}.{name}", issue)
        if streaming:
            async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                raise error
                yield  # an async generator, as grpc.aio expects of server-streaming handlers

            return stream

        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise error

        return unary

    methods = {m.name: placeholder(m.name, m.server_streaming) for m in descriptor.methods}
    return type(f"{descriptor.name}NotBuilt", (base,), methods)()


def not_built_app(name: str, descriptor: ServiceDescriptor, base: type, add_to_server: Any, issue: str) -> ServiceApp:
    """A service that boots, reports healthy and answers UNIMPLEMENTED until ``issue`` builds it."""

    async def build() -> AsyncIterator[Sequence[Registration]]:
        yield [Registration(descriptor, not_built_servicer(descriptor, base, issue), add_to_server)]

    return ServiceApp(name, build)
