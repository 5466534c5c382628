"""moteur.v1.Gateway over gRPC: authenticate, validate, call the domain, answer in protobuf."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from moteur.gateway import validation as check
from moteur.gateway.admission import AdmissionControl, estimate_tokens
from moteur.gateway.auth import Authenticator
from moteur.gateway.conversation import (
    REQUIRES_ACTION,
    Conversation,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnInput,
    TurnResult,
    TurnStarted,
)
from moteur.gateway.limits import LimitScope, LimitSet
from moteur.gateway.rendering import check_format
from moteur.gateway.sessions import Session, SessionStore, StoredMessage, parse_session_id
from moteur.gateway.tenants import TenantSettings, TenantSwitches
from moteur.gateway.tooling import ToolBox, client_tools, tool_choice
from moteur.gateway.usage import GROUPS, TokenUsage, UsageLedger, usage_report
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.channels import call_service, stream_service
from moteur.runtime.context import outgoing_timeout, time_remaining
from moteur.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from moteur.runtime.identity import Identity
from moteur.runtime.ids import is_valid_id
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.runtime.protonames import ROLES
from moteur.runtime.timestamps import to_datetime
from moteur.v1 import (
    common_pb2,
    files_pb2,
    files_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    tools_pb2,
)

Request = TypeVar("Request", bound=Message)

class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self, auth: Authenticator, keys: ApiKeyStore, sessions: SessionStore, usage: UsageLedger,
        conversation: Conversation, admission: AdmissionControl, router: router_pb2_grpc.RouterStub,
        memory: memory_pb2_grpc.MemoryStub, tenants: TenantSettings, toolbox: ToolBox,
        files: files_pb2_grpc.FilesStub,
    ) -> None:
        self._files = files
        self._toolbox = toolbox
        self._tenants = tenants
        self._router = router
        self._memory = memory
        self._auth = auth
        self._keys = keys
        self._usage = usage
        self._sessions = sessions
        self._conversation = conversation
        self._admission = admission

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ChatResponse:
        identity = await self._auth.authenticate(context)
        turn = _turn_input(identity, request)
        async with self._admitted(identity, turn, context) as settle:
            result = await self._conversation.chat(identity, check.scope(identity, turn.user), turn)
            await settle(result)
        return _chat_response(result)

    async def ChatStream(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        identity = await self._auth.authenticate(context)
        turn = _turn_input(identity, request)
        async with self._admitted(identity, turn, context) as settle:
            async for event in self._conversation.chat_stream(identity, check.scope(identity, turn.user), turn):
                if isinstance(event, TurnResult):
                    await settle(event)
                yield _chat_event(event)

    @contextlib.asynccontextmanager
    async def _admitted(
        self, identity: Identity, turn: TurnInput, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Callable[[TurnResult], Awaitable[None]]]:
        """Admission around a turn; yields how to settle it with its result."""
        estimate = estimate_tokens(turn.message, turn.max_output_tokens)
        pool = self._admission.pools.key(turn.request_type, turn.model_hint)
        async with self._admission.turn(
            identity, turn.user, turn.priority, estimate, time_remaining(), pool
        ) as admitted:
            context.set_trailing_metadata(admitted.metadata())

            async def settle(result: TurnResult) -> None:
                usage = result.usage if not result.replay else TokenUsage()
                await admitted.settle(usage.total_tokens, usage.cost_micro_usd)

            yield settle

    async def SubmitToolResults(
        self, request: gateway_pb2.SubmitToolResultsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ChatResponse:
        identity = await self._auth.authenticate(context)
        session_id = parse_session_id(request.session_id)
        if not request.results:
            raise InvalidArgument("results", "at least one result: one per pending tool call")
        scope = check.scope(identity, identity.user)
        continued = await self._conversation.continuation(identity, scope, session_id, request.results)
        async with self._admitted(identity, continued.turn, context) as settle:
            result = await self._conversation.resume(identity, scope, continued)
            await settle(result)
        return _chat_response(result)

    async def CreateSession(
        self, request: gateway_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Session:
        identity = await self._auth.authenticate(context)
        user = _required_user(identity, request.user_id)
        title = check.text_at_most(request.title, "title", check.MAX_TITLE_CHARS)
        session = await self._sessions.create(
            identity.tenant, user, title, check.metadata(request.metadata.entries)
        )
        return _session(session)

    async def GetSession(
        self, request: gateway_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetSessionResponse:
        identity = await self._auth.authenticate(context)
        session_id = parse_session_id(request.session_id)
        size = check.page_size(request.page_size, 50, check.MAX_PAGE_MESSAGES)
        after = _message_cursor(request.page_token)
        scope = check.scope(identity, identity.user)
        session = await self._sessions.get(scope, session_id)
        messages, cursor = await self._sessions.messages(scope, session_id, size, after)
        return gateway_pb2.GetSessionResponse(
            session=_session(session), messages=[_message(m) for m in messages], next_page_token=cursor
        )

    async def ListSessions(
        self, request: gateway_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListSessionsResponse:
        identity = await self._auth.authenticate(context)
        user = check.acting_user(identity, request.user_id)
        size = check.page_size(request.page_size, 20, check.MAX_PAGE_SESSIONS)
        sessions, cursor = await self._sessions.list(
            check.scope(identity, user), size, check.page_token(request.page_token)
        )
        return gateway_pb2.ListSessionsResponse(sessions=[_session(s) for s in sessions], next_page_token=cursor)

    async def DeleteSession(
        self, request: gateway_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DeleteSessionResponse:
        identity = await self._auth.authenticate(context)
        session_id = parse_session_id(request.session_id)
        deleted = await self._sessions.delete(check.scope(identity, identity.user), session_id)
        await self._conversation.forget_session(identity.tenant, session_id)
        return gateway_pb2.DeleteSessionResponse(deleted_messages=deleted)

    async def GetUsage(
        self, request: gateway_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetUsageResponse:
        identity = await self._auth.authenticate(context)
        user = check.acting_user(identity, request.user_id)  # a user key sees its own usage only
        if request.group_by not in GROUPS:
            raise InvalidArgument("group_by", f"one of {', '.join(repr(g) for g in GROUPS)}")
        now = datetime.now(UTC)
        start = to_datetime("start_time", request.start_time) if request.HasField("start_time") else now.replace(
            hour=0, minute=0, second=0, microsecond=0)
        end = to_datetime("end_time", request.end_time) if request.HasField("end_time") else now
        if end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        rows = await usage_report(self._usage, identity.tenant, user, start, end, request.group_by)
        total = TokenUsage(*(sum(getattr(r.usage, f) for r in rows)
                             for f in ("input_tokens", "output_tokens", "cost_micro_usd")))
        return gateway_pb2.GetUsageResponse(
            rows=[gateway_pb2.UsageRow(group=r.group, requests=r.requests, usage=_usage(r.usage.as_dict()))
                  for r in rows],
            total=_usage(total.as_dict()),
        )

    async def ListAlerts(
        self, request: gateway_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListAlertsResponse:
        identity = await self._auth.authenticate(context)
        size = check.page_size(request.page_size, 20, 100)
        alerts, cursor = await self._admission.alerts.list(identity.tenant, size, check.page_token(request.page_token))
        return gateway_pb2.ListAlertsResponse(
            alerts=[gateway_pb2.Alert(
                id=a.id, scope=a.scope, limit=a.limit, threshold_percent=a.threshold_percent, used=a.used,
                limit_value=a.limit_value, created_at=_timestamp(a.created_at),
            ) for a in alerts],
            next_page_token=cursor,
        )

    async def GetLimits(
        self, request: gateway_pb2.GetLimitsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Limits:
        identity = await self._auth.authenticate(context)
        scope = await self._limit_scope(identity, request.scope)
        limits = await self._admission.catalog.limits(scope, identity.tier)
        return gateway_pb2.Limits(scope=scope.name, tier=identity.tier, **limits.model_dump())

    async def SetLimits(
        self, request: gateway_pb2.SetLimitsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Limits:
        identity = await self._admin(context, "changing limits")
        scope = await self._limit_scope(identity, request.limits.scope)
        fields = {name: getattr(request.limits, name) for name in LimitSet.model_fields}
        try:
            limits = LimitSet(**fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidArgument(f"limits.{error['loc'][0]}", error["msg"].lower()) from None
        await self._admission.catalog.override(scope, limits)
        return gateway_pb2.Limits(scope=scope.name, tier=identity.tier, **limits.model_dump())

    # -- long-term memory ----------------------------------------------------------------------------------
    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListMemoriesResponse:
        identity, user = await self._memory_owner(context, request.user_id)
        forwarded = memory_pb2.ListMemoriesRequest()
        forwarded.CopyFrom(request)
        forwarded.user_id = user
        return await self._call_memory(self._memory.List, forwarded, identity)

    async def SearchMemories(
        self, request: gateway_pb2.SearchMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SearchResponse:
        identity, user = await self._memory_owner(context, request.user_id)
        return await self._call_memory(self._memory.Search, memory_pb2.SearchRequest(
            text=request.text, user_id=user, kinds=request.kinds, top_k=request.top_k, min_score=request.min_score,
            session_id=request.session_id, created_after=request.created_after,
            created_before=request.created_before,
        ), identity)

    async def GetMemoryHistory(
        self, request: gateway_pb2.GetMemoryHistoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.FactHistoryResponse:
        identity, user = await self._memory_owner(context, request.user_id)
        if not request.memory_id:
            raise InvalidArgument("memory_id", "required")
        # Scoped to the caller's tenant and user by memory: another's fact has no history here (NOT_FOUND).
        return await self._call_memory(
            self._memory.FactHistory, memory_pb2.FactHistoryRequest(user_id=user, id=request.memory_id), identity)

    async def UpdateMemory(
        self, request: gateway_pb2.UpdateMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.MemoryRecord:
        identity, user = await self._memory_owner(context, request.user_id)
        record = await self._own_memory(identity, user, request.memory_id)
        record.text = check.text_at_most(request.text, "text", MAX_TEXT_CHARS)
        if not record.text.strip():
            raise InvalidArgument("text", "must not be empty")
        record.ClearField("created_at")
        await self._call_memory(self._memory.Upsert, memory_pb2.UpsertRequest(records=[record]), identity)
        return record

    async def DeleteMemory(
        self, request: gateway_pb2.DeleteMemoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteMemoriesResponse:
        identity, user = await self._memory_owner(context, request.user_id)
        record = await self._own_memory(identity, user, request.memory_id)
        return await self._call_memory(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(ids=[record.id]),
                                       identity)

    async def UpsertDocument(
        self, request: memory_pb2.UpsertDocumentRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpsertDocumentResponse:
        identity = await self._auth.authenticate(context)
        # A user key stores its own documents; a service key the tenant's shared ones, or a named user's.
        return await self._call_memory(self._memory.UpsertDocument, _acting(identity, request), identity)

    async def DeleteDocument(
        self, request: gateway_pb2.DeleteDocumentRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteMemoriesResponse:
        identity = await self._auth.authenticate(context)
        if not request.document_id:
            raise InvalidArgument("document_id", "required")
        return await self._call_memory(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(
            document_id=request.document_id, user_id=identity.user,  # a user key: only its own documents
        ), identity)

    async def ForgetUser(
        self, request: gateway_pb2.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteMemoriesResponse:
        identity, user = await self._memory_owner(context, request.user_id)
        # First the messages still on their way: sent after memory forgot, they would bring the user back.
        await self._conversation.forget_user(identity.tenant, user)
        return await self._call_memory(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(user_id=user), identity)

    async def _memory_owner(self, context: grpc.aio.ServicerContext, requested: str) -> tuple[Identity, str]:
        identity = await self._auth.authenticate(context)
        return identity, _required_user(identity, requested)

    async def _admin(self, context: grpc.aio.ServicerContext, doing: str) -> Identity:
        """The caller, if its key is an admin key of its tenant; PERMISSION_DENIED otherwise."""
        identity = await self._auth.authenticate(context)
        if not identity.admin:
            raise PermissionDenied(f"{doing} needs an admin key of the tenant (moteur keys create --admin)")
        return identity

    async def _own_memory(self, identity: Identity, user: str, memory_id: str) -> memory_pb2.MemoryRecord:
        """The memory if it is this user's (in this tenant); NOT_FOUND otherwise, whoever it belongs to."""
        if not memory_id:
            raise InvalidArgument("memory_id", "required")
        listed = await self._call_memory(
            self._memory.List, memory_pb2.ListMemoriesRequest(user_id=user, ids=[memory_id], page_size=1), identity
        )
        if not listed.records:
            raise NotFound(f"memory {memory_id} not found")
        return listed.records[0]

    async def _call_memory(self, method: Any, request: Any, identity: Identity) -> Any:
        return await call_service(method, request, "memory", identity, outgoing_timeout(30.0))

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        identity = await self._auth.authenticate(context)
        return tools_pb2.ListToolsResponse(tools=await self._toolbox.list(identity))

    async def ListFiles(
        self, request: files_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.ListFilesResponse:
        identity = await self._auth.authenticate(context)
        return await call_service(self._files.ListFiles, _acting(identity, request), "files", identity,
                                  outgoing_timeout(10.0))  # a user key lists its own files only

    async def GetFile(
        self, request: files_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[files_pb2.FileChunk]:
        identity = await self._auth.authenticate(context)
        async for chunk in self._file_chunks(identity, request.file_id):
            yield chunk

    async def DeleteFile(
        self, request: files_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.DeleteFileResponse:
        identity = await self._auth.authenticate(context)
        if identity.user:  # a user key deletes its own files only: read the owner first
            async for _ in self._file_chunks(identity, request.file_id):
                break
        return await call_service(self._files.DeleteFile, request, "files", identity, outgoing_timeout(10.0))

    async def _file_chunks(self, identity: Identity, file_id: str) -> AsyncIterator[files_pb2.FileChunk]:
        """The file's chunks from the files service; another user's file is NOT_FOUND for a user key."""
        chunks = stream_service(self._files.GetFile, files_pb2.GetFileRequest(file_id=file_id), "files", identity,
                                outgoing_timeout(300.0))
        async with contextlib.aclosing(chunks):
            first = True
            async for chunk in chunks:
                if first and identity.user and chunk.info.user_id != identity.user:
                    raise NotFound(f"file {file_id} not found")
                first = False
                yield chunk

    async def ListTemplates(
        self, request: files_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.ListTemplatesResponse:
        identity = await self._auth.authenticate(context)
        return await call_service(self._files.ListTemplates, request, "files", identity, outgoing_timeout(10.0))

    async def PutTemplate(
        self, request: files_pb2.PutTemplateRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.TemplateInfo:
        identity = await self._admin(context, "storing a template")
        return await call_service(self._files.PutTemplate, request, "files", identity, outgoing_timeout(30.0))

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        identity = await self._auth.authenticate(context)
        listed = await call_service(self._router.ListModels, request, "router", identity, outgoing_timeout(10.0))
        # What this caller may name in model_hint; the mesh's internal capacities are not its business.
        visible = [m for m in listed.models if not m.tiers or identity.tier in m.tiers]
        for model in visible:
            model.ClearField("tiers")
        return router_pb2.ListModelsResponse(
            models=visible, default_model=listed.default_model, routes=listed.routes, revision=listed.revision
        )

    async def GetTenantSettings(
        self, request: gateway_pb2.GetTenantSettingsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TenantSettings:
        identity = await self._auth.authenticate(context)
        return _tenant_settings(await self._tenants.get(identity.tenant))

    async def SetTenantSettings(
        self, request: gateway_pb2.TenantSettings, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.TenantSettings:
        identity = await self._admin(context, "changing tenant settings")
        fields = ("memory_recall", "fact_extraction", "message_memory")
        switches = await self._tenants.set(
            identity.tenant, **{f: getattr(request, f) if request.HasField(f) else None for f in fields}
        )
        return _tenant_settings(switches)

    async def _limit_scope(self, identity: Identity, name: str) -> LimitScope:
        """A scope of the caller's own tenant: "tenant", "key:<id>" or "user:<id>". A user key (not an admin)
        names only its own key or user; another user's or key's limits are not its to read."""
        if name in ("", "tenant"):
            return LimitScope(identity.tenant, "tenant", identity.tenant)
        kind, _, value = name.partition(":")
        if kind == "key" and is_valid_id(value):
            if identity.user and not identity.admin and value != identity.key_id:
                raise PermissionDenied("a user key reads its own limits only: scope \"key:<its own id>\"")
            if not await self._keys.exists(identity.tenant, value):
                raise NotFound(f"key {value} not found")
            return LimitScope(identity.tenant, "key", value)
        if kind == "user" and value:
            if len(value) > check.MAX_USER_ID_CHARS or not value.isascii() or not value.isprintable():
                raise InvalidArgument("scope", f"a user id is at most {check.MAX_USER_ID_CHARS} printable ASCII "
                                               "characters")
            if identity.user and not identity.admin and value != identity.user:
                raise PermissionDenied("a user key reads its own limits only: scope \"user:<its own user>\"")
            return LimitScope(identity.tenant, "user", value)
        raise InvalidArgument("scope", 'one of "tenant", "key:<key id>" (a 26-character id from ListKeys) or '
                                       '"user:<user id>"')


def _turn_input(identity: Identity, request: gateway_pb2.ChatRequest) -> TurnInput:
    message = check.message_text(request.message)
    session_id = check.optional_session_id(request.session_id)
    user = check.acting_user(identity, request.user_id)
    if not session_id and not user:
        raise InvalidArgument("user_id", "required with a service key (one created without --user)")
    request_type = check.enum_value(common_pb2.RequestType, request.request_type, "request_type")
    priority = check.enum_value(common_pb2.Priority, request.priority, "priority")
    return TurnInput(
        session_id=session_id,
        user=user,
        message=message,
        request_type=request_type,
        priority=priority or common_pb2.PRIORITY_NORMAL,
        model_hint=check.model_hint(request.model_hint),
        allow_model_substitution=request.allow_model_substitution,
        max_output_tokens=check.bounded(request.max_output_tokens, "max_output_tokens", check.MAX_OUTPUT_TOKENS),
        idempotency_key=check.text_at_most(request.idempotency_key, "idempotency_key",
                                           check.MAX_IDEMPOTENCY_KEY_CHARS),
        metadata=check.metadata(request.metadata.entries),
        use_memory=request.use_memory if request.HasField("use_memory") else True,
        use_tools=request.use_tools if request.HasField("use_tools") else True,
        tool_choice=tool_choice(request.tool_choice),
        client_tools=client_tools(request.client_tools),
        output_format=check_format(check.enum_value(common_pb2.FileFormat, request.output_format, "output_format"),
                                   request.output_template),
        output_template=check.text_at_most(request.output_template, "output_template", 64),
    )


def _tenant_settings(switches: TenantSwitches) -> gateway_pb2.TenantSettings:
    return gateway_pb2.TenantSettings(memory_recall=switches.memory_recall, fact_extraction=switches.fact_extraction,
                                      message_memory=switches.message_memory)


def _acting(identity: Identity, request: Request) -> Request:
    """A copy of ``request`` whose ``user_id`` is the user the key acts for (a user key: always its own)."""
    forwarded = type(request)()
    forwarded.CopyFrom(request)
    forwarded.user_id = check.acting_user(identity, request.user_id)  # type: ignore[attr-defined]
    return forwarded


def _required_user(identity: Identity, requested: str) -> str:
    user = check.acting_user(identity, requested)
    if not user:
        raise InvalidArgument("user_id", "required with a service key (one created without --user)")
    return user


def _message_cursor(token: str) -> str:
    return parse_session_id(token, "page_token") if token else ""


def _timestamp(value: object) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp


def _usage(values: dict[str, int]) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=values.get("input_tokens", 0), output_tokens=values.get("output_tokens", 0),
        total_tokens=values.get("input_tokens", 0) + values.get("output_tokens", 0),
        cost_micro_usd=values.get("cost_micro_usd", 0),
    )


def _message(message: StoredMessage) -> common_pb2.Message:
    return common_pb2.Message(
        id=message.id, role=ROLES[message.role], content=message.content,
        created_at=_timestamp(message.created_at), model=message.model,
        usage=_usage(message.usage) if message.usage else None,
        tool_calls=[common_pb2.ToolCall(**c) for c in message.tool_calls],
        tool_result=common_pb2.ToolResult(**message.tool_result) if message.tool_result else None,
        file=common_pb2.FileRef(**message.file) if message.file else None,
    )


def _session(session: Session) -> gateway_pb2.Session:
    return gateway_pb2.Session(
        id=session.id, user_id=session.user, title=session.title, created_at=_timestamp(session.created_at),
        updated_at=_timestamp(session.updated_at), message_count=session.message_count,
        metadata=common_pb2.Metadata(entries=session.metadata),
    )


def _chat_response(result: TurnResult) -> gateway_pb2.ChatResponse:
    return gateway_pb2.ChatResponse(
        session_id=result.session_id,
        message=_message(result.answer),
        usage=_usage(result.answer.usage),
        model=result.answer.model,
        finish_reason=result.finish_reason,
        status=gateway_pb2.TURN_STATUS_REQUIRES_ACTION if result.status == REQUIRES_ACTION
        else gateway_pb2.TURN_STATUS_COMPLETED,
        pending_tool_calls=[common_pb2.ToolCall(**c) for c in result.pending],
        user_message_id=result.user_message_id,
        idempotent_replay=result.replay,
        route=common_pb2.Metadata(entries=result.route),
    )


def _chat_event(event: TurnEvent) -> gateway_pb2.ChatEvent:
    match event:
        case ToolStarted():
            return gateway_pb2.ChatEvent(tool=gateway_pb2.ToolEvent(call=event.call,
                                                                    runs_on_caller=event.runs_on_caller))
        case ToolFinished():
            return gateway_pb2.ChatEvent(tool=gateway_pb2.ToolEvent(call=event.call, result=event.result))
        case TurnStarted():
            return gateway_pb2.ChatEvent(started=gateway_pb2.ChatStarted(
                session_id=event.session_id, user_message_id=event.user_message_id))
        case TextDelta():
            return gateway_pb2.ChatEvent(delta=common_pb2.TokenDelta(text=event.text))
        case TurnResult():
            return gateway_pb2.ChatEvent(final=_chat_response(event))

