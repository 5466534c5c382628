"""moteur.v1.Router over gRPC: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from moteur.router.orchestrator import CompletionRequest, ModelRouter, RoutedCompletion
from moteur.router.providers import ModelTool, ToolCall, Turn
from moteur.router.registry import Route
from moteur.runtime import sampling
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import MODELS_REVISION_HEADER, mesh_identity
from moteur.runtime.protonames import ROLE_NAMES
from moteur.runtime.tooldefs import MAX_TOOLS, check_description, check_tool_name, check_unique, parse_schema
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

MAX_OUTPUT_TOKENS = 8192
MAX_MESSAGES = 1000

_TOOL_CHOICES = ("", "auto", "none", "required")
_FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS, "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}
# The request types routes name (registry.REQUEST_TYPES) and their values in the proto.
_TYPE_VALUES: dict[str, common_pb2.RequestType] = {
    "chat": common_pb2.REQUEST_TYPE_CHAT, "summarize": common_pb2.REQUEST_TYPE_SUMMARIZE,
    "extract": common_pb2.REQUEST_TYPE_EXTRACT, "code": common_pb2.REQUEST_TYPE_CODE,
}
_TYPES = {value: name for name, value in _TYPE_VALUES.items()}
_HEALTH = {"healthy": router_pb2.MODEL_HEALTH_HEALTHY, "degraded": router_pb2.MODEL_HEALTH_DEGRADED,
           "unavailable": router_pb2.MODEL_HEALTH_UNAVAILABLE}


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: ModelRouter) -> None:
        self._router = router

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        completion = _from_proto(request, mesh_identity(context).tier)
        context.set_trailing_metadata([(MODELS_REVISION_HEADER, self._router.revision)])
        return _to_proto(await self._router.complete(completion))

    async def StreamComplete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.CompleteEvent]:
        completion = _from_proto(request, mesh_identity(context).tier)
        context.set_trailing_metadata([(MODELS_REVISION_HEADER, self._router.revision)])
        async for item in self._router.stream(completion):
            if isinstance(item, RoutedCompletion):
                yield router_pb2.CompleteEvent(final=_to_proto(item))
            else:
                yield router_pb2.CompleteEvent(delta=common_pb2.TokenDelta(text=item))

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        router = self._router
        config = router.config
        catch_all = next(r for r in config.all_routes() if r.catch_all)
        models = []
        for m in config.models:
            state = router.fleet[m.name]
            models.append(router_pb2.ModelInfo(
                name=m.name, provider=m.provider, provider_model=m.model, context_window=m.context_window,
                input_price_micro_usd_per_1k=round(m.input_price_per_1k_usd * 1e6),
                output_price_micro_usd_per_1k=round(m.output_price_per_1k_usd * 1e6),
                supports_streaming=m.supports_streaming, supports_tools=m.supports_tools,
                supports_json=m.supports_json, health=_HEALTH[state.health], in_flight=state.in_flight,
                group=m.group_name, max_concurrency=m.max_concurrency, weight=m.weight, tiers=m.tiers,
            ))
        return router_pb2.ListModelsResponse(
            models=models, default_model=catch_all.candidates[0], revision=router.revision,
            routes=[_route_info(r) for r in config.all_routes()], dispatch_capacity=config.dispatch_capacity(),
        )


def _route_info(route: Route) -> router_pb2.RouteInfo:
    conditions = [f"{k}={','.join(v) if isinstance(v, list) else v}"
                  for k, v in route.when.model_dump(exclude_defaults=True).items()]
    return router_pb2.RouteInfo(
        name=route.name, candidates=route.candidates, conditions="; ".join(conditions),
        request_types=[_TYPE_VALUES[t] for t in route.request_types],
        classifiable=bool(route.examples),
    )


def _from_proto(request: router_pb2.CompleteRequest, tier: str) -> CompletionRequest:
    if not request.messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"at most {MAX_MESSAGES} messages, got {len(request.messages)}")
    if not 0 <= request.max_output_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidArgument("max_output_tokens", f"must be between 0 and {MAX_OUTPUT_TOKENS}")
    if request.request_type and request.request_type not in _TYPES:
        raise InvalidArgument("request_type", f"unknown request type {request.request_type}")
    tools = _tools(request)
    turns = [_turn(index, message) for index, message in enumerate(request.messages)]
    if all(turn.role == "system" for turn in turns):
        raise InvalidArgument("messages", "system messages alone ask nothing: add a user message")
    return CompletionRequest(
        turns=turns,
        request_type=_TYPES.get(request.request_type, ""),
        model_hint=request.model_hint,
        tier=tier,
        max_output_tokens=request.max_output_tokens,
        temperature=sampling.temperature(request.temperature if request.HasField("temperature") else None),
        top_p=sampling.top_p(request.top_p if request.HasField("top_p") else None),
        stop=list(sampling.stop_sequences(request.stop)),
        json_output=request.json_output or bool(request.json_schema),
        json_schema=parse_schema("json_schema", request.json_schema) if request.json_schema else None,
        tools=tools,
        tool_choice="" if request.tool_choice == "auto" else request.tool_choice,
        allow_model_substitution=request.allow_model_substitution,
    )


def _turn(index: int, message: router_pb2.PromptMessage) -> Turn:
    where = f"messages[{index}]"
    role = ROLE_NAMES.get(message.role)
    if role is None:
        raise InvalidArgument(f"{where}.role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL")
    if role == "tool" and not message.tool_call_id:
        raise InvalidArgument(f"{where}.tool_call_id", "required on a ROLE_TOOL message: the call it answers")
    if message.tool_calls and role != "assistant":
        raise InvalidArgument(f"{where}.tool_calls", "only ROLE_ASSISTANT messages carry tool calls")
    calls = tuple(ToolCall(c.id, c.name, c.arguments_json) for c in message.tool_calls)
    for n, call in enumerate(calls):
        if not call.id:
            raise InvalidArgument(f"{where}.tool_calls[{n}].id", "required: the tool message answering it names it")
    return Turn(role, message.content, calls, message.tool_call_id)


def _tools(request: router_pb2.CompleteRequest) -> tuple[ModelTool, ...]:
    if len(request.tools) > MAX_TOOLS:
        raise InvalidArgument("tools", f"at most {MAX_TOOLS} tools, got {len(request.tools)}")
    tools = tuple(
        ModelTool(check_tool_name(f"tools[{n}].name", t.name),
                  check_description(f"tools[{n}].description", t.description),
                  parse_schema(f"tools[{n}].parameters_schema_json", t.parameters_schema_json))
        for n, t in enumerate(request.tools)
    )
    names = [t.name for t in tools]
    check_unique("tools", names)
    choice = request.tool_choice
    if choice and choice not in _TOOL_CHOICES and choice not in names:
        raise InvalidArgument("tool_choice", f"{choice[:80]!r} is neither auto, none, required nor one of the "
                              f"tools offered ({', '.join(names) or 'none'})")
    if choice not in ("", "auto", "none") and not tools:
        raise InvalidArgument("tool_choice", f"{choice!r} needs tools to choose from")
    return tools


def _to_proto(result: RoutedCompletion) -> router_pb2.CompleteResponse:
    decision = result.decision
    return router_pb2.CompleteResponse(
        text=result.completion.text,
        tool_calls=[common_pb2.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json)
                    for c in result.completion.tool_calls],
        finish_reason=_FINISH[result.completion.finish_reason],
        usage=common_pb2.Usage(
            input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            total_tokens=result.input_tokens + result.output_tokens, cost_micro_usd=result.cost_micro_usd,
        ),
        model=result.deployment.name,
        route=decision.route.name,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        dropped_messages=result.dropped_messages,
        route_decision=decision.how,
        route_score=decision.score,
        classified_as=_TYPE_VALUES[decision.classified_as] if decision.classified_as
        else common_pb2.REQUEST_TYPE_UNSPECIFIED,
        time_to_first_token_ms=result.time_to_first_token_ms,
    )
