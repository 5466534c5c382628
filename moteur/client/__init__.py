"""The Python client internal services import to talk to moteur's gateway.

``AsyncMoteurClient`` (grpc.aio) and ``MoteurClient`` (blocking) have the same methods and return the
protobuf messages of ``moteur.v1.gateway``; failures raise :class:`MoteurClientError`. ``MoteurRetriever``
is a LangChain retriever over the caller's memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from moteur.client.errors import MoteurClientError
from moteur.client.requests import (
    FILE_FORMATS,
    auth_metadata,
    chat_request,
    enum_value,
    limits_request,
    memory_kinds,
    template_request,
    tool_result,
)
from moteur.v1 import common_pb2, files_pb2, gateway_pb2, gateway_pb2_grpc, memory_pb2, router_pb2, tools_pb2

if TYPE_CHECKING:
    from moteur.client.retriever import MoteurRetriever

__all__ = ["AsyncMoteurClient", "MoteurClient", "MoteurClientError", "MoteurRetriever", "tool_result"]


def __getattr__(name: str) -> Any:
    # MoteurRetriever is loaded on first use: langchain_core takes ~0.7 s to import, which every CLI
    # command (and every service that only wants the client) would otherwise pay.
    if name == "MoteurRetriever":
        from moteur.client.retriever import MoteurRetriever

        return MoteurRetriever
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    async def chat(
        self, message: str, *, timeout: float | None = None, allow_model_substitution: bool = False, **options: Any
    ) -> gateway_pb2.ChatResponse:
        """One turn. Options: session_id, user_id, request_type, priority, model_hint, output_format,
        output_template, metadata, idempotency_key, max_output_tokens, use_memory, use_tools, tool_choice,
        client_tools (``[{"name", "description", "input_schema", "output_schema"}]``).

        A model named in ``model_hint`` answers or the call fails UNAVAILABLE naming it; with
        ``allow_model_substitution`` another model may answer instead (the response's ``model`` says which)."""
        request = chat_request(message, allow_model_substitution=allow_model_substitution, **options)
        return await self._unary(self._stub.Chat, request, timeout)

    async def submit_tool_results(
        self, session_id: str, results: Sequence[common_pb2.ToolResult], *, timeout: float | None = None
    ) -> gateway_pb2.ChatResponse:
        """Continue a turn that answered REQUIRES_ACTION: one result per pending call (see ``tool_result``)."""
        return await self._unary(self._stub.SubmitToolResults, gateway_pb2.SubmitToolResultsRequest(
            session_id=session_id, results=results), timeout)

    async def chat_stream(
        self, message: str, *, timeout: float | None = None, allow_model_substitution: bool = False, **options: Any
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        """The same turn, streamed: a ``started`` event, ``delta`` events, then one ``final`` event (its
        ``model`` is the model that answered)."""
        request = chat_request(message, allow_model_substitution=allow_model_substitution, **options)
        async for event in self._streamed(self._stub.ChatStream, request, timeout):
            yield event

    async def _streamed(self, method: Any, request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = method(request, **self._options(timeout))
        try:
            async for item in call:
                yield item
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

    async def list_models(self) -> router_pb2.ListModelsResponse:
        return await self._unary(self._stub.ListModels, router_pb2.ListModelsRequest())

    async def list_tools(self) -> tools_pb2.ListToolsResponse:
        return await self._unary(self._stub.ListTools, tools_pb2.ListToolsRequest())

    async def list_files(self, user_id: str = "", session_id: str = "", page_size: int = 0,
                         page_token: str = "") -> files_pb2.ListFilesResponse:
        return await self._unary(self._stub.ListFiles, files_pb2.ListFilesRequest(
            user_id=user_id, session_id=session_id, page_size=page_size, page_token=page_token))

    async def get_file(self, file_id: str, *, timeout: float | None = None) -> AsyncIterator[files_pb2.FileChunk]:
        """The file's chunks; the first carries its FileInfo."""
        async for chunk in self._streamed(self._stub.GetFile, files_pb2.GetFileRequest(file_id=file_id), timeout):
            yield chunk

    async def delete_file(self, file_id: str) -> files_pb2.DeleteFileResponse:
        return await self._unary(self._stub.DeleteFile, files_pb2.DeleteFileRequest(file_id=file_id))

    async def list_templates(self, file_format: int | str = 0) -> files_pb2.ListTemplatesResponse:
        return await self._unary(self._stub.ListTemplates, files_pb2.ListTemplatesRequest(
            format=enum_value(file_format, FILE_FORMATS, "file format")))

    async def put_template(self, name: str, source: str, formats: Sequence[int | str],
                           description: str = "") -> files_pb2.TemplateInfo:
        return await self._unary(self._stub.PutTemplate, template_request(name, source, formats, description))

    async def get_tenant_settings(self) -> gateway_pb2.TenantSettings:
        return await self._unary(self._stub.GetTenantSettings, gateway_pb2.GetTenantSettingsRequest())

    async def set_tenant_settings(self, memory_recall: bool | None = None, fact_extraction: bool | None = None,
                                  message_memory: bool | None = None) -> gateway_pb2.TenantSettings:
        return await self._unary(self._stub.SetTenantSettings, gateway_pb2.TenantSettings(
            memory_recall=memory_recall, fact_extraction=fact_extraction, message_memory=message_memory))

    async def list_memories(self, user_id: str = "", kinds: Sequence[str] = (), page_size: int = 0,
                            page_token: str = "") -> memory_pb2.ListMemoriesResponse:
        return await self._unary(self._stub.ListMemories, memory_pb2.ListMemoriesRequest(
            user_id=user_id, kinds=memory_kinds(kinds), page_size=page_size, page_token=page_token))

    async def search_memories(self, text: str, user_id: str = "", kinds: Sequence[str] = (), top_k: int = 0,
                              min_score: float = 0.0, session_id: str = "") -> memory_pb2.SearchResponse:
        """The memories nearest ``text``, best first; ``min_score`` is a cosine similarity in [-1, 1]."""
        return await self._unary(self._stub.SearchMemories, gateway_pb2.SearchMemoriesRequest(
            text=text, user_id=user_id, kinds=memory_kinds(kinds), top_k=top_k, min_score=min_score,
            session_id=session_id))

    async def memory_history(self, memory_id: str, user_id: str = "") -> memory_pb2.FactHistoryResponse:
        """How a fact changed, oldest first (also after it was deleted)."""
        return await self._unary(self._stub.GetMemoryHistory, gateway_pb2.GetMemoryHistoryRequest(
            memory_id=memory_id, user_id=user_id))

    async def update_memory(self, memory_id: str, text: str, user_id: str = "") -> memory_pb2.MemoryRecord:
        return await self._unary(self._stub.UpdateMemory, gateway_pb2.UpdateMemoryRequest(
            memory_id=memory_id, text=text, user_id=user_id))

    async def delete_memory(self, memory_id: str, user_id: str = "") -> memory_pb2.DeleteMemoriesResponse:
        return await self._unary(self._stub.DeleteMemory, gateway_pb2.DeleteMemoryRequest(
            memory_id=memory_id, user_id=user_id))

    async def upsert_document(self, text: str, title: str = "", document_id: str = "", user_id: str = "",
                              chunk_chars: int = 0) -> memory_pb2.UpsertDocumentResponse:
        return await self._unary(self._stub.UpsertDocument, memory_pb2.UpsertDocumentRequest(
            text=text, title=title, document_id=document_id, user_id=user_id, chunk_chars=chunk_chars))

    async def delete_document(self, document_id: str) -> memory_pb2.DeleteMemoriesResponse:
        return await self._unary(self._stub.DeleteDocument, gateway_pb2.DeleteDocumentRequest(document_id=document_id))

    async def forget_user(self, user_id: str = "") -> memory_pb2.DeleteMemoriesResponse:
        return await self._unary(self._stub.ForgetUser, gateway_pb2.ForgetUserRequest(user_id=user_id))

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

    def chat(
        self, message: str, *, timeout: float | None = None, allow_model_substitution: bool = False, **options: Any
    ) -> gateway_pb2.ChatResponse:
        request = chat_request(message, allow_model_substitution=allow_model_substitution, **options)
        return self._unary(self._stub.Chat, request, timeout)

    def submit_tool_results(
        self, session_id: str, results: Sequence[common_pb2.ToolResult], *, timeout: float | None = None
    ) -> gateway_pb2.ChatResponse:
        return self._unary(self._stub.SubmitToolResults, gateway_pb2.SubmitToolResultsRequest(
            session_id=session_id, results=results), timeout)

    def chat_stream(
        self, message: str, *, timeout: float | None = None, allow_model_substitution: bool = False, **options: Any
    ) -> Iterator[gateway_pb2.ChatEvent]:
        request = chat_request(message, allow_model_substitution=allow_model_substitution, **options)
        yield from self._streamed(self._stub.ChatStream, request, timeout)

    def _streamed(self, method: Any, request: Any, timeout: float | None) -> Iterator[Any]:
        call = method(request, metadata=self._metadata, timeout=timeout if timeout is not None else self._timeout)
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

    def list_models(self) -> router_pb2.ListModelsResponse:
        return self._unary(self._stub.ListModels, router_pb2.ListModelsRequest())

    def list_tools(self) -> tools_pb2.ListToolsResponse:
        return self._unary(self._stub.ListTools, tools_pb2.ListToolsRequest())

    def list_files(self, user_id: str = "", session_id: str = "", page_size: int = 0,
                   page_token: str = "") -> files_pb2.ListFilesResponse:
        return self._unary(self._stub.ListFiles, files_pb2.ListFilesRequest(
            user_id=user_id, session_id=session_id, page_size=page_size, page_token=page_token))

    def get_file(self, file_id: str, *, timeout: float | None = None) -> Iterator[files_pb2.FileChunk]:
        yield from self._streamed(self._stub.GetFile, files_pb2.GetFileRequest(file_id=file_id), timeout)

    def save_file(self, file_id: str, directory: Path) -> Path:
        """Stream a file into ``directory`` under its own name; returns the path written."""
        path: Path | None = None
        with contextlib.ExitStack() as stack:
            for chunk in self.get_file(file_id):
                if path is None:
                    path = directory / Path(chunk.info.ref.name).name  # never a path the server chose
                    out = stack.enter_context(path.open("wb"))
                out.write(chunk.data)
        if path is None:
            raise MoteurClientError(grpc.StatusCode.DATA_LOSS, f"file {file_id} came without its info")
        return path

    def delete_file(self, file_id: str) -> files_pb2.DeleteFileResponse:
        return self._unary(self._stub.DeleteFile, files_pb2.DeleteFileRequest(file_id=file_id))

    def list_templates(self, file_format: int | str = 0) -> files_pb2.ListTemplatesResponse:
        return self._unary(self._stub.ListTemplates, files_pb2.ListTemplatesRequest(
            format=enum_value(file_format, FILE_FORMATS, "file format")))

    def put_template(self, name: str, source: str, formats: Sequence[int | str],
                     description: str = "") -> files_pb2.TemplateInfo:
        return self._unary(self._stub.PutTemplate, template_request(name, source, formats, description))

    def get_tenant_settings(self) -> gateway_pb2.TenantSettings:
        return self._unary(self._stub.GetTenantSettings, gateway_pb2.GetTenantSettingsRequest())

    def set_tenant_settings(self, memory_recall: bool | None = None, fact_extraction: bool | None = None,
                            message_memory: bool | None = None) -> gateway_pb2.TenantSettings:
        return self._unary(self._stub.SetTenantSettings, gateway_pb2.TenantSettings(
            memory_recall=memory_recall, fact_extraction=fact_extraction, message_memory=message_memory))

    def list_memories(self, user_id: str = "", kinds: Sequence[str] = (), page_size: int = 0,
                            page_token: str = "") -> memory_pb2.ListMemoriesResponse:
        return self._unary(self._stub.ListMemories, memory_pb2.ListMemoriesRequest(
            user_id=user_id, kinds=memory_kinds(kinds), page_size=page_size, page_token=page_token))

    def search_memories(self, text: str, user_id: str = "", kinds: Sequence[str] = (), top_k: int = 0,
                        min_score: float = 0.0, session_id: str = "") -> memory_pb2.SearchResponse:
        return self._unary(self._stub.SearchMemories, gateway_pb2.SearchMemoriesRequest(
            text=text, user_id=user_id, kinds=memory_kinds(kinds), top_k=top_k, min_score=min_score,
            session_id=session_id))

    def memory_history(self, memory_id: str, user_id: str = "") -> memory_pb2.FactHistoryResponse:
        return self._unary(self._stub.GetMemoryHistory, gateway_pb2.GetMemoryHistoryRequest(
            memory_id=memory_id, user_id=user_id))

    def update_memory(self, memory_id: str, text: str, user_id: str = "") -> memory_pb2.MemoryRecord:
        return self._unary(self._stub.UpdateMemory, gateway_pb2.UpdateMemoryRequest(
            memory_id=memory_id, text=text, user_id=user_id))

    def delete_memory(self, memory_id: str, user_id: str = "") -> memory_pb2.DeleteMemoriesResponse:
        return self._unary(self._stub.DeleteMemory, gateway_pb2.DeleteMemoryRequest(
            memory_id=memory_id, user_id=user_id))

    def upsert_document(self, text: str, title: str = "", document_id: str = "", user_id: str = "",
                              chunk_chars: int = 0) -> memory_pb2.UpsertDocumentResponse:
        return self._unary(self._stub.UpsertDocument, memory_pb2.UpsertDocumentRequest(
            text=text, title=title, document_id=document_id, user_id=user_id, chunk_chars=chunk_chars))

    def delete_document(self, document_id: str) -> memory_pb2.DeleteMemoriesResponse:
        return self._unary(self._stub.DeleteDocument, gateway_pb2.DeleteDocumentRequest(document_id=document_id))

    def forget_user(self, user_id: str = "") -> memory_pb2.DeleteMemoriesResponse:
        return self._unary(self._stub.ForgetUser, gateway_pb2.ForgetUserRequest(user_id=user_id))

    def list_alerts(self, page_size: int = 0, page_token: str = "") -> gateway_pb2.ListAlertsResponse:
        return self._unary(self._stub.ListAlerts, gateway_pb2.ListAlertsRequest(
            page_size=page_size, page_token=page_token))

    def get_limits(self, scope: str = "tenant") -> gateway_pb2.Limits:
        return self._unary(self._stub.GetLimits, gateway_pb2.GetLimitsRequest(scope=scope))

    def set_limits(self, scope: str, **limits: int) -> gateway_pb2.Limits:
        return self._unary(self._stub.SetLimits, limits_request(scope, limits))

    def get_usage(self, user_id: str = "", group_by: str = "") -> gateway_pb2.GetUsageResponse:
        return self._unary(self._stub.GetUsage, gateway_pb2.GetUsageRequest(user_id=user_id, group_by=group_by))
