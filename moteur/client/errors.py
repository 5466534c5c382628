"""The one exception the client raises, with the gRPC status and google.rpc details decoded."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest, error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo, error_details_pb2.ResourceInfo,
)


@dataclass
class MoteurClientError(Exception):
    """A call failed: ``code`` says how (grpc.StatusCode), ``message`` what to do, ``details`` the specifics."""

    code: grpc.StatusCode
    message: str
    details: list[Message] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @property
    def retry_after_seconds(self) -> float | None:
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo):
                return detail.retry_delay.ToNanoseconds() / 1e9
        return None

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> MoteurClientError:
        call: grpc.Call = error  # type: ignore[assignment]  # a raised RpcError is also its grpc.Call
        details: list[Message] = []
        status = rpc_status.from_call(call)
        for packed in status.details if status is not None else ():
            for detail_type in _DETAIL_TYPES:
                if packed.Is(detail_type.DESCRIPTOR):
                    detail = detail_type()
                    packed.Unpack(detail)
                    details.append(detail)
        return cls(call.code(), call.details() or "", details)
