"""moteur.v1.Router over gRPC: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from moteur.router.orchestrator import CompletionRequest, ModelRouter, RoutedCompletion
from moteur.router.providers import Role, Turn
from moteur.runtime.errors import InvalidArgument, not_built_yet
from moteur.runtime.identity import mesh_identity
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

MAX_OUTPUT_TOKENS = 8192
MAX_MESSAGES = 1000

_ROLES: dict[int, Role] = {
    common_pb2.ROLE_SYSTEM: "system", common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant",
}
_FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH,
    "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS, "content_filter": common_pb2.FINISH_REASON_CONTENT_FILTER,
}


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: ModelRouter) -> None:
        self._router = router

    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.CompleteResponse:
        mesh_identity(context)
        return _to_proto(await self._router.complete(_from_proto(request)))

    async def StreamComplete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.CompleteEvent]:
        mesh_identity(context)
        async for item in self._router.stream(_from_proto(request)):
            if isinstance(item, RoutedCompletion):
                yield router_pb2.CompleteEvent(final=_to_proto(item))
            else:
                yield router_pb2.CompleteEvent(delta=common_pb2.TokenDelta(text=item))

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        config = self._router.config
        return router_pb2.ListModelsResponse(
            default_model=config.default_model,
            models=[
                router_pb2.ModelInfo(
                    name=m.name, provider=m.provider, provider_model=m.model, context_window=m.context_window,
                    input_price_micro_usd_per_1k=round(m.input_price_per_1k_usd * 1e6),
                    output_price_micro_usd_per_1k=round(m.output_price_per_1k_usd * 1e6),
                    supports_streaming=m.supports_streaming, supports_tools=m.supports_tools,
                    supports_json=m.supports_json,
                    # Live health arrives with circuit breakers (issue 5); until then, configured means usable.
                    health=router_pb2.MODEL_HEALTH_UNSPECIFIED,
                )
                for m in config.models
            ],
        )


def _from_proto(request: router_pb2.CompleteRequest) -> CompletionRequest:
    if not request.messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"at most {MAX_MESSAGES} messages, got {len(request.messages)}")
    if request.tools or request.json_output:
        raise not_built_yet("Tool calling and JSON output in Router.Complete", "issue #5/#7 (router, tools)")
    if not 0 <= request.max_output_tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidArgument("max_output_tokens", f"must be between 0 and {MAX_OUTPUT_TOKENS}")
    if request.HasField("temperature") and not 0 <= request.temperature <= 2:
        raise InvalidArgument("temperature", "must be between 0 and 2")
    if len(request.stop) > 4:
        raise InvalidArgument("stop", "at most 4 stop sequences")
    turns = []
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(
                f"messages[{index}].role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
            )
        turns.append(Turn(role, message.content))
    return CompletionRequest(
        turns=turns,
        model_hint=request.model_hint,
        max_output_tokens=request.max_output_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        stop=list(request.stop),
    )


def _to_proto(result: RoutedCompletion) -> router_pb2.CompleteResponse:
    return router_pb2.CompleteResponse(
        text=result.completion.text,
        finish_reason=_FINISH[result.completion.finish_reason],
        usage=common_pb2.Usage(
            input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            total_tokens=result.input_tokens + result.output_tokens, cost_micro_usd=result.cost_micro_usd,
        ),
        model=result.deployment.name,
        route="default",
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        dropped_messages=result.dropped_messages,
    )
