"""The Python client internal services import to talk to moteur's gateway.

``AsyncMoteurClient`` (grpc.aio) defines every method once; ``MoteurClient`` (blocking, for scripts and the
CLI) runs it on a private event loop in a background thread, so both have the same methods, arguments and
protobuf results (``moteur.v1.gateway``), and failures raise :class:`MoteurClientError` from either.
``MoteurRetriever`` is a LangChain retriever over the caller's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, Unpack

import grpc

from moteur.client.errors import MoteurClientError
from moteur.client.requests import (
    FILE_FORMATS,
    ChatOptions,
    LimitOptions,
    auth_metadata,
    cache_settings,
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

__all__ = ["AsyncMoteurClient", "ChatOptions", "LimitOptions", "MoteurClient", "MoteurClientError",
           "MoteurRetriever", "cache_settings", "tool_result"]


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
        self, message: str, *, timeout: float | None = None, **options: Unpack[ChatOptions]
    ) -> gateway_pb2.ChatResponse:
        """One turn (options: :class:`ChatOptions`). A model named in ``model_hint`` answers or the call fails
        UNAVAILABLE naming it; with ``allow_model_substitution`` another model may answer instead (the
        response's ``model`` says which)."""
        return await self._unary(self._stub.Chat, chat_request(message, **options), timeout)

    async def submit_tool_results(
        self, session_id: str, results: Sequence[common_pb2.ToolResult], *, timeout: float | None = None
    ) -> gateway_pb2.ChatResponse:
        """Continue a turn that answered REQUIRES_ACTION: one result per pending call (see ``tool_result``)."""
        return await self._unary(self._stub.SubmitToolResults, gateway_pb2.SubmitToolResultsRequest(
            session_id=session_id, results=results), timeout)

    async def chat_stream(
        self, message: str, *, timeout: float | None = None, **options: Unpack[ChatOptions]
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        """The same turn, streamed: a ``started`` event, ``delta`` events, then one ``final`` event (its
        ``model`` is the model that answered)."""
        request = chat_request(message, **options)
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

    async def get_file(
        self, file_id: str, *, timeout: float | None = None
    ) -> AsyncGenerator[files_pb2.FileChunk, None]:
        """The file's chunks; the first carries its FileInfo."""
        async for chunk in self._streamed(self._stub.GetFile, files_pb2.GetFileRequest(file_id=file_id), timeout):
            yield chunk

    async def save_file(self, file_id: str, directory: Path) -> Path:
        """Stream a file into ``directory`` under its own name; returns the path written."""
        path: Path | None = None
        with contextlib.ExitStack() as stack:
            chunks = self.get_file(file_id)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    if path is None:
                        path = directory / Path(chunk.info.ref.name).name  # never a path the server chose
                        out = stack.enter_context(path.open("wb"))
                    out.write(chunk.data)
        if path is None:
            raise MoteurClientError(grpc.StatusCode.DATA_LOSS, f"file {file_id} came without its info")
        return path

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

    async def set_tenant_settings(
        self, memory_recall: bool | None = None, fact_extraction: bool | None = None,
        message_memory: bool | None = None, response_cache: gateway_pb2.ResponseCacheSettings | None = None,
    ) -> gateway_pb2.TenantSettings:
        """Change the switches given (None: unchanged); ``response_cache`` (see ``cache_settings``) replaces the
        tenant's response cache whole."""
        return await self._unary(self._stub.SetTenantSettings, gateway_pb2.TenantSettings(
            memory_recall=memory_recall, fact_extraction=fact_extraction, message_memory=message_memory,
            response_cache=response_cache))

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

    async def set_limits(self, scope: str, **limits: Unpack[LimitOptions]) -> gateway_pb2.Limits:
        """Replace a scope's limits (admin keys): requests_per_minute=…, tokens_per_day=…; 0 is unlimited."""
        return await self._unary(self._stub.SetLimits, limits_request(scope, limits))

    async def get_usage(self, user_id: str = "", group_by: str = "") -> gateway_pb2.GetUsageResponse:
        """Today's usage (UTC), grouped by "", "model", "user", "key" or "day"."""
        return await self._unary(self._stub.GetUsage, gateway_pb2.GetUsageRequest(user_id=user_id, group_by=group_by))


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncMoteurClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[MoteurClient, P], R]:
    """The blocking form of an ``AsyncMoteurClient`` method: same arguments, run on the client's loop."""

    @functools.wraps(method)
    def blocking(self: MoteurClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(method(self._client, *args, **kwargs))

    return blocking


def _blocking_stream(
    method: Callable[Concatenate[AsyncMoteurClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[MoteurClient, P], Iterator[T]]:
    """The blocking form of a streaming ``AsyncMoteurClient`` method: yields each item as it arrives; closing
    the iterator early cancels the call."""

    @functools.wraps(method)
    def blocking(self: MoteurClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        stream = method(self._client, *args, **kwargs)
        try:
            while item := self._run(_next(stream)):
                yield item[0]
        finally:
            if not self._closed and isinstance(stream, AsyncGenerator):
                self._run(stream.aclose())  # cancels the call

    return blocking


async def _next(stream: AsyncIterator[T]) -> tuple[T] | tuple[()]:
    """The stream's next item, or () at its end (StopAsyncIteration does not cross threads well)."""
    try:
        return (await anext(stream),)
    except StopAsyncIteration:
        return ()


async def _open(address: str, api_key: str, timeout: float | None) -> AsyncMoteurClient:
    return AsyncMoteurClient(address, api_key, timeout=timeout)  # its channel belongs to the running loop


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)


class MoteurClient:
    """The blocking twin of :class:`AsyncMoteurClient`, for scripts and the CLI: the same methods, each running
    the async one on this client's own event loop (a daemon thread), so it may be called from any thread."""

    def __init__(self, address: str, api_key: str, *, timeout: float | None = 60.0) -> None:
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moteur-client", daemon=True)
        self._thread.start()
        weakref.finalize(self, _stop, self._loop)  # a client never closed does not keep its thread
        self._client = self._run(_open(address, api_key, timeout))

    def __enter__(self) -> MoteurClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
            self._run(self._loop.shutdown_asyncgens())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        if self._closed:
            coroutine.close()
            raise RuntimeError("this MoteurClient is closed")
        if threading.get_ident() == self._thread.ident:
            coroutine.close()
            raise RuntimeError("a MoteurClient cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C): stop the call; a no-op when it failed on its own
            raise

    chat = _blocking(AsyncMoteurClient.chat)
    submit_tool_results = _blocking(AsyncMoteurClient.submit_tool_results)
    chat_stream = _blocking_stream(AsyncMoteurClient.chat_stream)
    create_session = _blocking(AsyncMoteurClient.create_session)
    get_session = _blocking(AsyncMoteurClient.get_session)
    list_sessions = _blocking(AsyncMoteurClient.list_sessions)
    delete_session = _blocking(AsyncMoteurClient.delete_session)
    list_models = _blocking(AsyncMoteurClient.list_models)
    list_tools = _blocking(AsyncMoteurClient.list_tools)
    list_files = _blocking(AsyncMoteurClient.list_files)
    get_file = _blocking_stream(AsyncMoteurClient.get_file)
    save_file = _blocking(AsyncMoteurClient.save_file)
    delete_file = _blocking(AsyncMoteurClient.delete_file)
    list_templates = _blocking(AsyncMoteurClient.list_templates)
    put_template = _blocking(AsyncMoteurClient.put_template)
    get_tenant_settings = _blocking(AsyncMoteurClient.get_tenant_settings)
    set_tenant_settings = _blocking(AsyncMoteurClient.set_tenant_settings)
    list_memories = _blocking(AsyncMoteurClient.list_memories)
    search_memories = _blocking(AsyncMoteurClient.search_memories)
    memory_history = _blocking(AsyncMoteurClient.memory_history)
    update_memory = _blocking(AsyncMoteurClient.update_memory)
    delete_memory = _blocking(AsyncMoteurClient.delete_memory)
    upsert_document = _blocking(AsyncMoteurClient.upsert_document)
    delete_document = _blocking(AsyncMoteurClient.delete_document)
    forget_user = _blocking(AsyncMoteurClient.forget_user)
    list_alerts = _blocking(AsyncMoteurClient.list_alerts)
    get_limits = _blocking(AsyncMoteurClient.get_limits)
    set_limits = _blocking(AsyncMoteurClient.set_limits)
    get_usage = _blocking(AsyncMoteurClient.get_usage)
