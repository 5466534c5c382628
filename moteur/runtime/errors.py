"""Domain errors and their one mapping to gRPC status codes with google.rpc details.

Domain code raises these; the server interceptor turns them into a status a client can act on. Anything
else that escapes a handler becomes INTERNAL with the request id, never a stack trace on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class MoteurError(Exception):
    """An error with the gRPC status it deserves and a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds  # sent as google.rpc.RetryInfo when set
        self.metadata: list[tuple[str, str]] = []  # trailing metadata sent with the status (e.g. the budget)

    def details(self) -> Sequence[any_pb2.Any]:
        return [_retry_info(self.retry_after_seconds)] if self.retry_after_seconds is not None else []


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(MoteurError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations = [FieldViolation(field, description)]

    def details(self) -> Sequence[any_pb2.Any]:
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        return [_pack(request)]


class Unauthenticated(MoteurError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(MoteurError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(MoteurError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MoteurError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(MoteurError):
    """A conflict the caller resolves by retrying later (e.g. the same idempotency key in flight)."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(MoteurError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(MoteurError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MoteurError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(MoteurError):
    code = grpc.StatusCode.UNIMPLEMENTED


@dataclass(frozen=True)
class QuotaViolation:
    subject: str  # e.g. "tenant:acme"
    description: str  # e.g. "requests_per_minute limit of 60 reached"


class ResourceExhausted(MoteurError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, *, retry_after_seconds: float | None = None,
        violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds)
        self.violations = list(violations)
        self.quota_use: object | None = None  # set by the limiter when a quota (not a rate) refused

    def details(self) -> Sequence[any_pb2.Any]:
        packed: list[any_pb2.Any] = []
        if self.violations:
            failure = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                    for v in self.violations
                ]
            )
            packed.append(_pack(failure))
        return [*packed, *super().details()]


class RemoteError(MoteurError):
    """A status another service of the mesh answered with, passed on with its code and details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any] = ()) -> None:
        super().__init__(message)
        self.code = code
        self._details = list(details)

    def details(self) -> Sequence[any_pb2.Any]:
        return self._details


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> MoteurError:
    """What to answer our caller when a call to ``service`` failed."""
    code = error.code()
    if code is grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
        return Unavailable(f"the {service} service is unreachable; retry shortly")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the {service} service did not answer before the deadline")
    if code is grpc.StatusCode.CANCELLED:
        return RemoteError(code, f"the call to the {service} service was cancelled")
    # from_call reads code(), details() and trailing_metadata(), which AioRpcError has; its stubs say grpc.Call.
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    details = list(status.details) if status is not None else []
    return RemoteError(code, error.details() or f"the {service} service failed with {code.name}", details)


def to_grpc_status(error: MoteurError) -> grpc.Status:
    """The status (code, message, google.rpc details in trailing metadata) to abort a call with."""
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=list(error.details())
    )
    return rpc_status.to_status(status)


def _retry_info(seconds: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
