"""Protobuf to the gateway's own types and back: every conversion of the public API, in one place.

Reading a request validates it (INVALID_ARGUMENT naming the field); writing a response never fails.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar, cast

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from moteur.gateway import validation as check
from moteur.gateway.rendering import check_format
from moteur.gateway.sessions import Session, StoredMessage, parse_session_id
from moteur.gateway.tenants import (
    DEFAULT_CACHE_TTL_SECONDS,
    MAX_CACHE_TTL_SECONDS,
    MIN_CACHE_TTL_SECONDS,
    CachePolicy,
    TenantSwitches,
)
from moteur.gateway.tooling import client_tools, tool_choice
from moteur.gateway.turns import (
    REQUIRES_ACTION,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnInput,
    TurnResult,
    TurnStarted,
)
from moteur.gateway.usage import TokenUsage
from moteur.runtime import sampling
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.runtime.protonames import ROLES
from moteur.v1 import common_pb2, gateway_pb2

Forwarded = TypeVar("Forwarded", bound=Message)

# -- requests ------------------------------------------------------------------------------------------


def turn_input(identity: Identity, request: gateway_pb2.ChatRequest) -> TurnInput:
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
        use_cache=request.use_cache if request.HasField("use_cache") else True,
        use_tools=request.use_tools if request.HasField("use_tools") else True,
        tool_choice=tool_choice(request.tool_choice),
        client_tools=client_tools(request.client_tools),
        output_format=check_format(check.enum_value(common_pb2.FileFormat, request.output_format, "output_format"),
                                   request.output_template),
        output_template=check.text_at_most(request.output_template, "output_template", 64),
        temperature=sampling.temperature(request.temperature if request.HasField("temperature") else None),
        top_p=sampling.top_p(request.top_p if request.HasField("top_p") else None),
        stop=sampling.stop_sequences(request.stop),
        json_schema=check.json_schema(request.json_schema),
        json_output=request.json_output or bool(request.json_schema),
    )


def acting(identity: Identity, request: Forwarded) -> Forwarded:
    """A copy of ``request`` whose ``user_id`` is the user the key acts for (a user key: always its own)."""
    forwarded = type(request)()
    forwarded.CopyFrom(request)
    forwarded.user_id = check.acting_user(identity, request.user_id)  # type: ignore[attr-defined]  # every Forwarded has user_id
    return forwarded


def required_user(identity: Identity, requested: str) -> str:
    """The user the key acts for; a service key must name one."""
    user = check.acting_user(identity, requested)
    if not user:
        raise InvalidArgument("user_id", "required with a service key (one created without --user)")
    return user


def message_cursor(token: str) -> str:
    return parse_session_id(token, "page_token") if token else ""


# -- responses -----------------------------------------------------------------------------------------


def timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def usage(values: TokenUsage | dict[str, int]) -> common_pb2.Usage:
    counted = values if isinstance(values, TokenUsage) else TokenUsage.from_dict(values)
    return common_pb2.Usage(
        input_tokens=counted.input_tokens, output_tokens=counted.output_tokens,
        total_tokens=counted.input_tokens + counted.output_tokens, cost_micro_usd=counted.cost_micro_usd,
    )


def message(stored: StoredMessage) -> common_pb2.Message:
    return common_pb2.Message(
        id=stored.id, role=ROLES[stored.role], content=stored.content,
        created_at=timestamp(stored.created_at), model=stored.model,
        usage=usage(stored.usage) if stored.usage else None,
        tool_calls=[common_pb2.ToolCall(**c) for c in stored.tool_calls],
        tool_result=common_pb2.ToolResult(**stored.tool_result) if stored.tool_result else None,
        file=common_pb2.FileRef(**stored.file) if stored.file else None,
    )


def session(stored: Session) -> gateway_pb2.Session:
    return gateway_pb2.Session(
        id=stored.id, user_id=stored.user, title=stored.title, created_at=timestamp(stored.created_at),
        updated_at=timestamp(stored.updated_at), message_count=stored.message_count,
        metadata=common_pb2.Metadata(entries=stored.metadata),
    )


def tenant_settings(switches: TenantSwitches) -> gateway_pb2.TenantSettings:
    cache = switches.response_cache
    return gateway_pb2.TenantSettings(
        memory_recall=switches.memory_recall, fact_extraction=switches.fact_extraction,
        message_memory=switches.message_memory,
        response_cache=gateway_pb2.ResponseCacheSettings(
            enabled=cache.enabled, ttl_seconds=cache.ttl_seconds,
            request_types=[cast(common_pb2.RequestType, t) for t in cache.request_types]),
    )


def cache_policy(given: gateway_pb2.ResponseCacheSettings) -> CachePolicy:
    """The tenant's response cache as an admin sets it; INVALID_ARGUMENT naming the field otherwise."""
    if given.ttl_seconds and not MIN_CACHE_TTL_SECONDS <= given.ttl_seconds <= MAX_CACHE_TTL_SECONDS:
        raise InvalidArgument("response_cache.ttl_seconds", f"{MIN_CACHE_TTL_SECONDS} to {MAX_CACHE_TTL_SECONDS:,} "
                                                            f"(0 means {DEFAULT_CACHE_TTL_SECONDS:,}), got "
                                                            f"{given.ttl_seconds}")
    for index, request_type in enumerate(given.request_types):
        field = f"response_cache.request_types[{index}]"
        if not check.enum_value(common_pb2.RequestType, request_type, field):
            raise InvalidArgument(field, "a request type the cache answers, not REQUEST_TYPE_UNSPECIFIED (leave the "
                                         "list empty for every one)")
    return CachePolicy(given.enabled, tuple(sorted(set(given.request_types))),
                       given.ttl_seconds or DEFAULT_CACHE_TTL_SECONDS)


def chat_response(result: TurnResult) -> gateway_pb2.ChatResponse:
    return gateway_pb2.ChatResponse(
        session_id=result.session_id,
        message=message(result.answer),
        usage=usage(result.answer.usage),
        model=result.answer.model,
        finish_reason=cast(common_pb2.FinishReason, result.finish_reason),
        status=gateway_pb2.TURN_STATUS_REQUIRES_ACTION if result.status == REQUIRES_ACTION
        else gateway_pb2.TURN_STATUS_COMPLETED,
        pending_tool_calls=[common_pb2.ToolCall(**c) for c in result.pending],
        user_message_id=result.user_message_id,
        idempotent_replay=result.replay,
        route=common_pb2.Metadata(entries=result.route),
        cached=result.route.get("cache") == "hit",
    )


def chat_event(event: TurnEvent) -> gateway_pb2.ChatEvent:
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
            return gateway_pb2.ChatEvent(final=chat_response(event))
