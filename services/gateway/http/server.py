"""The HTTP API served by uvicorn on the gateway's event loop, beside its gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette

from moteur.runtime.tls import TlsSettings

log = structlog.get_logger("moteur.gateway.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service's runtime owns SIGTERM (moteur.runtime.server: drain, then stop): uvicorn must not take it.
        yield


@contextlib.asynccontextmanager
async def serving(app: Starlette, host: str, port: int, drain_seconds: float,
                  tls: TlsSettings | None = None) -> AsyncIterator[None]:
    """Serve ``app`` on ``host:port`` while the block runs (port 0: not at all); requests in flight when it
    ends get ``drain_seconds`` to finish. With TLS configured, HTTPS with the gRPC port's certificate, and the
    same demand for client certificates."""
    if port == 0:
        yield
        return
    tls = tls or TlsSettings()
    secure: dict[str, Any] = {}
    if tls.enabled:
        secure = {"ssl_certfile": str(tls.tls_cert_file), "ssl_keyfile": str(tls.tls_key_file)}
        if tls.tls_ca_file is not None:
            secure |= {"ssl_ca_certs": str(tls.tls_ca_file),
                       "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.tls_require_client_cert else ssl.CERT_OPTIONAL}
    server = _Server(uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None, access_log=False,
                                    timeout_graceful_shutdown=max(1, int(drain_seconds)), **secure))
    task = asyncio.create_task(server.serve(), name="http-api")
    while not server.started:  # uvicorn exits the process when it cannot bind: the service fails to start
        if task.done():
            task.result()
            raise RuntimeError(f"the HTTP API did not start on {host}:{port}")
        await asyncio.sleep(0.01)
    log.info("http.started", address=f"{host}:{port}", tls=tls.enabled)
    try:
        yield
    finally:
        server.should_exit = True
        await task
