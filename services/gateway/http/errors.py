"""moteur's errors in OpenAI's error JSON, with the HTTP status its SDK turns into the matching exception.

``{"error": {"message", "type", "param", "code"}}``: the openai SDK raises ``BadRequestError`` for 400,
``AuthenticationError`` for 401, ``PermissionDeniedError`` 403, ``NotFoundError`` 404, ``ConflictError`` 409,
``RateLimitError`` 429 (it honours ``Retry-After``), ``InternalServerError`` for 5xx.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from starlette.responses import JSONResponse

from moteur.runtime.errors import InvalidArgument, MoteurError

# gRPC status -> (HTTP status, OpenAI error type)
_STATUSES: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def error_response(error: MoteurError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer to a request that failed with ``error``."""
    status, _ = _STATUSES.get(error.code, (500, "server_error"))
    headers = {**(headers or {}), **dict(error.metadata)}
    if error.retry_after_seconds is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after_seconds)))
    return JSONResponse(error_body(error), status_code=status, headers=headers)


def error_body(error: MoteurError | None) -> dict[str, Any]:
    """OpenAI's error JSON for ``error`` (None: a failure the gateway logged, not the caller's)."""
    if error is None:
        return {"error": {"message": "internal error: the gateway logged it; retry, and report it if it persists",
                          "type": "server_error", "param": None, "code": "internal"}}
    _, kind = _STATUSES.get(error.code, (500, "server_error"))
    param = error.violations[0].field if isinstance(error, InvalidArgument) and error.violations else None
    return {"error": {"message": error.message, "type": kind, "param": param, "code": error.code.name.lower()}}


def http_error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """An error found by the HTTP layer itself (an unknown path, a body that is not JSON)."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)
