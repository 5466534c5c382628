"""moteur's errors as the OpenAI SDK expects them from the HTTP API (moteur.gateway.http.errors)."""

from __future__ import annotations

import json

import pytest

from moteur.gateway.http.errors import error_response
from moteur.runtime.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MoteurError,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)


@pytest.mark.parametrize(("error", "status", "kind"), [
    (InvalidArgument("messages", "at least one"), 400, "invalid_request_error"),
    (FailedPrecondition("key used for another request"), 400, "invalid_request_error"),
    (Unauthenticated("API key not recognised"), 401, "authentication_error"),
    (PermissionDenied("tier free may not"), 403, "permission_error"),
    (NotFound("session 01J not found"), 404, "not_found_error"),
    (Aborted("still in progress"), 409, "conflict_error"),
    (ResourceExhausted("requests_per_minute limit of 60 reached"), 429, "rate_limit_error"),
    (Unavailable("the router is unreachable"), 503, "service_unavailable"),
    (DeadlineExceeded("the turn used its 120 s"), 504, "timeout"),
    (MoteurError("a bug"), 500, "server_error"),
])
def test_each_error_has_its_status_and_type(error: MoteurError, status: int, kind: str) -> None:
    response = error_response(error)
    body = json.loads(bytes(response.body))
    assert response.status_code == status
    assert body["error"]["type"] == kind and body["error"]["message"] == error.message
    assert body["error"]["code"] == error.code.name.lower()


def test_a_refusal_to_retry_later_says_when_and_keeps_the_budget_headers() -> None:
    error = ResourceExhausted("tokens_per_minute limit reached", retry_after_seconds=2.2,
                              violations=[QuotaViolation("key:k1", "tokens_per_minute limit of 1000 reached")])
    error.metadata = [("x-ratelimit-remaining-requests", "0")]
    response = error_response(error)
    assert response.headers["retry-after"] == "3"  # whole seconds, rounded up: never too early
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_bad_field_is_named_as_the_param() -> None:
    body = json.loads(bytes(error_response(InvalidArgument("temperature", "must be between 0 and 2")).body))
    assert body["error"]["param"] == "temperature"
