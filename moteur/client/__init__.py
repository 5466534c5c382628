"""The Python client internal services import to talk to moteur's gateway.

``AsyncMoteurClient`` (grpc.aio) and ``MoteurClient`` (blocking) have the same methods and return the
protobuf messages of ``moteur.v1.gateway``; failures raise :class:`MoteurClientError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc

from moteur.client.errors import MoteurClientError
from moteur.client.requests import auth_metadata, chat_request, limits_request
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["AsyncMoteurClient", "MoteurClient", "MoteurClientError"]


class AsyncMoteurClient:
    def __init__(self, address: str, api_key: str, *, timeout: float | None = 60.0) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self._timeout = timeout

    async def __aenter__(self) -> AsyncMoteurClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _options(self, timeout: float | None) -> dict[str, Any]:
        return {"metadata": self._metadata, "timeout": timeout if timeout is not None else self._timeout}

    async def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, **self._options(timeout))
        except grpc.aio.AioRpcError as error:
            raise MoteurClientError.from_rpc_error(error) from None

    async def chat(self, message: str, *, timeout: float | None = None, **options: Any) -> gateway_pb2.ChatResponse:
        """One turn. Options: session_id, user_id, request_type, priority, model_hint, output_format,
        output_template, metadata, idempotency_key, max_output_tokens."""
        return await self._unary(self._stub.Chat, chat_request(message, **options), timeout)

    async def chat_stream(
        self, message: str, *, timeout: float | None = None, **options: Any
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        """The same turn, streamed: a ``started`` event, ``delta`` events, then one ``final`` event."""
        call = self._stub.ChatStream(chat_request(message, **options), **self._options(timeout))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as error:
            raise MoteurClientError.from_rpc_error(error) from None
        finally:
            call.cancel()

    async def create_session(
        self, user_id: str = "", title: str = "", metadata: Mapping[str, str] | None = None
    ) -> gateway_pb2.Session:
        return await self._unary(self._stub.CreateSession, gateway_pb2.CreateSessionRequest(
            user_id=user_id, title=title, metadata={"entries": dict(metadata or {})}))

    async def get_session(
        self, session_id: str, page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.GetSessionResponse:
        return await self._unary(self._stub.GetSession, gateway_pb2.GetSessionRequest(
            session_id=session_id, page_size=page_size, page_token=page_token))

    async def list_sessions(
        self, user_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.ListSessionsResponse:
        return await self._unary(self._stub.ListSessions, gateway_pb2.ListSessionsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token))

    async def delete_session(self, session_id: str) -> gateway_pb2.DeleteSessionResponse:
        return await self._unary(self._stub.DeleteSession, gateway_pb2.DeleteSessionRequest(session_id=session_id))

    async def list_alerts(self, page_size: int = 0, page_token: str = "") -> gateway_pb2.ListAlertsResponse:
        return await self._unary(self._stub.ListAlerts, gateway_pb2.ListAlertsRequest(
            page_size=page_size, page_token=page_token))

    async def get_limits(self, scope: str = "tenant") -> gateway_pb2.Limits:
        return await self._unary(self._stub.GetLimits, gateway_pb2.GetLimitsRequest(scope=scope))

    async def set_limits(self, scope: str, **limits: int) -> gateway_pb2.Limits:
        """Replace a scope's limits (admin keys): requests_per_minute=…, tokens_per_day=…; 0 is unlimited."""
        return await self._unary(self._stub.SetLimits, limits_request(scope, limits))

    async def get_usage(self, user_id: str = "", group_by: str = "") -> gateway_pb2.GetUsageResponse:
        """Today's usage (UTC), grouped by "", "model", "user", "key" or "day"."""
        return await self._unary(self._stub.GetUsage, gateway_pb2.GetUsageRequest(user_id=user_id, group_by=group_by))


class MoteurClient:
    """The blocking twin of :class:`AsyncMoteurClient`, for scripts and the CLI."""

    def __init__(self, address: str, api_key: str, *, timeout: float | None = 60.0) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self._timeout = timeout

    def __enter__(self) -> MoteurClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=timeout if timeout is not None else self._timeout)
        except grpc.RpcError as error:
            raise MoteurClientError.from_rpc_error(error) from None

    def chat(self, message: str, *, timeout: float | None = None, **options: Any) -> gateway_pb2.ChatResponse:
        return self._unary(self._stub.Chat, chat_request(message, **options), timeout)

    def chat_stream(
        self, message: str, *, timeout: float | None = None, **options: Any
    ) -> Iterator[gateway_pb2.ChatEvent]:
        call = self._stub.ChatStream(
            chat_request(message, **options), metadata=self._metadata,
            timeout=timeout if timeout is not None else self._timeout,
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise MoteurClientError.from_rpc_error(error) from None
        finally:
            call.cancel()

    def create_session(
        self, user_id: str = "", title: str = "", metadata: Mapping[str, str] | None = None
    ) -> gateway_pb2.Session:
        return self._unary(self._stub.CreateSession, gateway_pb2.CreateSessionRequest(
            user_id=user_id, title=title, metadata={"entries": dict(metadata or {})}))

    def get_session(self, session_id: str, page_size: int = 0, page_token: str = "") -> gateway_pb2.GetSessionResponse:
        return self._unary(self._stub.GetSession, gateway_pb2.GetSessionRequest(
            session_id=session_id, page_size=page_size, page_token=page_token))

    def list_sessions(
        self, user_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.ListSessionsResponse:
        return self._unary(self._stub.ListSessions, gateway_pb2.ListSessionsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token))

    def delete_session(self, session_id: str) -> gateway_pb2.DeleteSessionResponse:
        return self._unary(self._stub.DeleteSession, gateway_pb2.DeleteSessionRequest(session_id=session_id))

    def list_alerts(self, page_size: int = 0, page_token: str = "") -> gateway_pb2.ListAlertsResponse:
        return self._unary(self._stub.ListAlerts, gateway_pb2.ListAlertsRequest(
            page_size=page_size, page_token=page_token))

    def get_limits(self, scope: str = "tenant") -> gateway_pb2.Limits:
        return self._unary(self._stub.GetLimits, gateway_pb2.GetLimitsRequest(scope=scope))

    def set_limits(self, scope: str, **limits: int) -> gateway_pb2.Limits:
        return self._unary(self._stub.SetLimits, limits_request(scope, limits))

    def get_usage(self, user_id: str = "", group_by: str = "") -> gateway_pb2.GetUsageResponse:
        return self._unary(self._stub.GetUsage, gateway_pb2.GetUsageRequest(user_id=user_id, group_by=group_by))
