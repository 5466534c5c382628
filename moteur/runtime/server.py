"""The grpc.aio server bootstrap every service runs: health, reflection, metrics, graceful drain.

A service describes itself as a :class:`ServiceApp` — its name, an async generator that opens its
dependencies, yields the servicers to register and closes them after the drain, and for an internal
service the scope each of its methods needs — and calls :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import structlog
import uvloop
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from moteur.runtime.interceptors import MeshGuard, ObservabilityInterceptor
from moteur.runtime.logging import configure_logging
from moteur.runtime.mesh_tokens import MeshTokenVerifier
from moteur.runtime.metrics import serve_metrics
from moteur.runtime.settings import MeshAuthSettings, ServerSettings
from moteur.runtime.tls import TlsSettings
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
    name: str  # "gateway", "router", …: labels metrics, logs and traces, and is the audience of its tokens
    build: Build
    # An internal service: the scope each method needs (see moteur.runtime.identity); every call must carry
    # a mesh token that grants it. None: the public gateway, which authenticates API keys itself.
    scopes: Mapping[str, str] | None = None
    # The event loop whatever ServerSettings.event_loop says: a service whose code does not run on uvloop.
    event_loop: Literal["uvloop", "asyncio"] | None = None


def _guard(app: ServiceApp, registrations: Sequence[Registration], auth: MeshAuthSettings) -> MeshGuard | None:
    if app.scopes is None:
        return None
    if auth.mesh_keys_dir is None:
        raise RuntimeError(f"the {app.name} service needs MOTEUR_MESH_KEYS_DIR: the public keys whose mesh "
                           "tokens it accepts (make run writes them to .data/mesh-keys/public)")
    unscoped = [m.name for r in registrations for m in r.descriptor.methods if m.name not in app.scopes]
    if unscoped:  # fail at start, not with a refusal at the first call
        raise RuntimeError(f"{app.name}: no scope declared for {', '.join(unscoped)}")
    verifier = MeshTokenVerifier.from_directory(auth.mesh_keys_dir, app.name, auth.mesh_token_leeway_seconds)
    return MeshGuard(app.name, verifier, app.scopes)


async def serve(
    app: ServiceApp, settings: ServerSettings, stop: asyncio.Event | None = None, tls: TlsSettings | None = None
) -> None:
    """Serve until ``stop`` is set (SIGTERM/SIGINT set it when run from :func:`run`), then drain."""
    stop = stop or asyncio.Event()
    tls = tls or TlsSettings()
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Accept the mesh channels' keepalive pings (every 30 s, moteur.runtime.channels) on calls that wait
        # long without data, e.g. a slow model: the default (5 min) answers them with GOAWAY too_many_pings.
        ("grpc.http2.min_ping_interval_without_data_ms", 15_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients re-resolve when a connection ends: without an age they would never see a new pod.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
    ]
    async with contextlib.asynccontextmanager(app.build)() as registrations:
        guard = _guard(app, registrations, MeshAuthSettings())
        server = grpc.aio.server(interceptors=[ObservabilityInterceptor(app.name, guard)], options=options)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [r.descriptor.full_name for r in registrations]
        for registration in registrations:
            registration.add_to_server(registration.servicer, server)
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{settings.listen_host}:{settings.grpc_port}"
        bound = server.add_secure_port(address, tls.server_credentials()) if tls.enabled else \
            server.add_insecure_port(address)
        if bound == 0:
            raise RuntimeError(f"cannot listen on {address}")
        probes = _health_only(health_servicer, f"{settings.listen_host}:{tls.health_port}") if tls.enabled else None
        await server.start()
        if probes is not None:
            await probes.start()
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("server.started", address=address, services=names, metrics_port=settings.metrics_port,
                 tls="mutual" if tls.tls_ca_file else ("server" if tls.enabled else "off"),
                 health_port=tls.health_port if tls.enabled else None)
        await stop.wait()
        # Drain: report NOT_SERVING so load balancers stop sending, then let in-flight calls finish.
        for name in ("", *names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for registration in registrations:
            if registration.on_drain is not None:
                registration.on_drain()
        log.info("server.draining", grace_seconds=settings.drain_seconds)
        await server.stop(settings.drain_seconds)
        if probes is not None:
            await probes.stop(0)
        log.info("server.stopped")


def _health_only(health_servicer: health.aio.HealthServicer, address: str) -> grpc.aio.Server:
    """The health service alone, in plaintext: what a TLS service answers the kubelet's probes on."""
    probes = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probes)
    if probes.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address} (MOTEUR_HEALTH_PORT)")
    return probes


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

    if (app.event_loop or settings.event_loop) == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())

