"""The one mapping from domain errors to gRPC status and google.rpc details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from moteur.runtime.errors import (
    InvalidArgument,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    not_built_yet,
    to_grpc_status,
)


def _decode(status: grpc.Status) -> status_pb2.Status:
    (value,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def test_invalid_argument_names_the_field_in_bad_request() -> None:
    status = to_grpc_status(InvalidArgument("message", "must not be empty"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "message: must not be empty"
    bad_request = error_details_pb2.BadRequest()
    assert _decode(status).details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [("message", "must not be empty")]


def test_resource_exhausted_carries_quota_failure_and_a_computed_retry_delay() -> None:
    error = ResourceExhausted(
        "too many requests", retry_after_seconds=1.25,
        violations=[QuotaViolation("tenant:acme", "requests_per_minute limit of 60 reached")],
    )
    details = _decode(to_grpc_status(error)).details
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert details[0].Unpack(failure) and details[1].Unpack(retry)
    assert failure.violations[0].subject == "tenant:acme"
    assert retry.retry_delay.ToNanoseconds() == 1_250_000_000


def test_errors_without_details_still_map_their_code() -> None:
    status = to_grpc_status(NotFound("session X not found"))
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert _decode(status).details == []


def test_not_built_yet_names_the_method_and_the_issue() -> None:
    error = not_built_yet("Files.Render", "issue #8 (file generation)")
    assert error.code is grpc.StatusCode.UNIMPLEMENTED
    assert error.message == "Files.Render is not built yet; it arrives with issue #8 (file generation)."
