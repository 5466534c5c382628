"""moteur.v1.Gateway over gRPC: authenticate, validate, call the domain, answer in protobuf."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from moteur.gateway import validation as check
from moteur.gateway.admission import AdmissionControl, estimate_tokens
from moteur.gateway.auth import ApiKeyStore, Authenticator
from moteur.gateway.conversation import Conversation, TextDelta, TurnInput, TurnResult, TurnStarted
from moteur.gateway.limits import LimitScope, LimitSet
from moteur.gateway.sessions import Session, SessionStore, StoredMessage, parse_session_id
from moteur.gateway.usage import GROUPS, TokenUsage, UsageLedger, usage_report
from moteur.runtime.context import time_remaining
from moteur.runtime.errors import InvalidArgument, NotFound, PermissionDenied, not_built_yet
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

_ROLES = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT,
          "system": common_pb2.ROLE_SYSTEM, "tool": common_pb2.ROLE_TOOL}


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self, auth: Authenticator, keys: ApiKeyStore, sessions: SessionStore, usage: UsageLedger,
        conversation: Conversation, admission: AdmissionControl,
    ) -> None:
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
        async with self._admission.turn(identity, turn.user, turn.priority, estimate, time_remaining()) as admitted:
            context.set_trailing_metadata(admitted.metadata())

            async def settle(result: TurnResult) -> None:
                usage = result.usage if not result.replay else TokenUsage()
                await admitted.settle(usage.total_tokens, usage.cost_micro_usd)

            yield settle

    async def SubmitToolResults(
        self, request: gateway_pb2.SubmitToolResultsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ChatResponse:
        await self._auth.authenticate(context)
        raise not_built_yet("Gateway.SubmitToolResults", "issue #7 (function calling)")

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
        return gateway_pb2.DeleteSessionResponse(deleted_messages=deleted)

    async def GetUsage(
        self, request: gateway_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetUsageResponse:
        identity = await self._auth.authenticate(context)
        user = check.acting_user(identity, request.user_id)  # a user key sees its own usage only
        if request.group_by not in GROUPS:
            raise InvalidArgument("group_by", f"one of {', '.join(repr(g) for g in GROUPS)}")
        now = datetime.now(UTC)
        start = request.start_time.ToDatetime(UTC) if request.HasField("start_time") else now.replace(
            hour=0, minute=0, second=0, microsecond=0)
        end = request.end_time.ToDatetime(UTC) if request.HasField("end_time") else now
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
        identity = await self._auth.authenticate(context)
        if not identity.admin:
            raise PermissionDenied("changing limits needs an admin key of the tenant (moteur keys create --admin)")
        scope = await self._limit_scope(identity, request.limits.scope)
        fields = {name: getattr(request.limits, name) for name in LimitSet.model_fields}
        try:
            limits = LimitSet(**fields)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise InvalidArgument(f"limits.{error['loc'][0]}", error["msg"].lower()) from None
        await self._admission.catalog.override(scope, limits)
        return gateway_pb2.Limits(scope=scope.name, tier=identity.tier, **limits.model_dump())

    async def _limit_scope(self, identity: Identity, name: str) -> LimitScope:
        """A scope of the caller's own tenant: "tenant", "key:<id>" or "user:<id>"."""
        if name in ("", "tenant"):
            return LimitScope(identity.tenant, "tenant", identity.tenant)
        kind, _, value = name.partition(":")
        if kind not in ("key", "user") or not value:
            raise InvalidArgument("scope", 'one of "tenant", "key:<key id>" or "user:<user id>"')
        if kind == "key" and not await self._keys.exists(identity.tenant, value):
            raise NotFound(f"key {value} not found")
        return LimitScope(identity.tenant, kind, value)  # type: ignore[arg-type]


def _turn_input(identity: Identity, request: gateway_pb2.ChatRequest) -> TurnInput:
    message = check.message_text(request.message)
    session_id = check.optional_session_id(request.session_id)
    user = check.acting_user(identity, request.user_id)
    if not session_id and not user:
        raise InvalidArgument("user_id", "required with a service key (one created without --user)")
    request_type = check.enum_value(common_pb2.RequestType, request.request_type, "request_type")
    priority = check.enum_value(common_pb2.Priority, request.priority, "priority")
    check.enum_value(common_pb2.FileFormat, request.output_format, "output_format")
    if request.output_format != common_pb2.FILE_FORMAT_UNSPECIFIED or request.output_template:
        raise not_built_yet("Rendering a chat answer into a file (output_format)", "issue #8 (files)")
    if request.client_tools:
        raise not_built_yet("Caller-side tools (client_tools)", "issue #7 (function calling)")
    return TurnInput(
        session_id=session_id,
        user=user,
        message=message,
        request_type=request_type,
        priority=priority or common_pb2.PRIORITY_NORMAL,
        model_hint=check.model_hint(request.model_hint),
        max_output_tokens=check.bounded(request.max_output_tokens, "max_output_tokens", check.MAX_OUTPUT_TOKENS),
        idempotency_key=check.text_at_most(request.idempotency_key, "idempotency_key",
                                           check.MAX_IDEMPOTENCY_KEY_CHARS),
        metadata=check.metadata(request.metadata.entries),
    )


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
        id=message.id, role=_ROLES[message.role], content=message.content,
        created_at=_timestamp(message.created_at), model=message.model,
        usage=_usage(message.usage) if message.usage else None,
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
        status=gateway_pb2.TURN_STATUS_COMPLETED,
        user_message_id=result.user_message_id,
        idempotent_replay=result.replay,
        route=common_pb2.Metadata(entries=result.route),
    )


def _chat_event(event: TurnStarted | TextDelta | TurnResult) -> gateway_pb2.ChatEvent:
    match event:
        case TurnStarted():
            return gateway_pb2.ChatEvent(started=gateway_pb2.ChatStarted(
                session_id=event.session_id, user_message_id=event.user_message_id))
        case TextDelta():
            return gateway_pb2.ChatEvent(delta=common_pb2.TokenDelta(text=event.text))
        case TurnResult():
            return gateway_pb2.ChatEvent(final=_chat_response(event))
