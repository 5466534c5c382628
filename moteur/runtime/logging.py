"""Structured logs (structlog): JSON lines in clusters, readable lines by hand.

The request id and the RPC method are bound in context variables by the server interceptor, so every
line logged while serving a call carries them without being passed around.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

import structlog


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _summarize_exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries that use the standard logging module (pymongo, httpx) go to the same stream.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")


def exception_summary(exc: BaseException) -> dict[str, Any]:
    """What a log line may say of an exception: its type and where it was raised (file:line function), never
    its message or the frames' locals, which may hold user text, secrets or tokens."""
    frames = traceback.extract_tb(exc.__traceback__)[-8:]
    return {"error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "stack": [f"{f.filename.rsplit('/', 2)[-1] if f.filename else '?'}:{f.lineno} {f.name}" for f in frames]}


def _summarize_exceptions(
    logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """``exc_info`` (log.exception, exc_info=True) becomes :func:`exception_summary`."""
    exc_info = event.pop("exc_info", None)
    if exc_info:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if exc is not None:
            event.update(exception_summary(exc))
    return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
