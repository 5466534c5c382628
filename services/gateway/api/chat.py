"""Chat turns (Chat, ChatStream, SubmitToolResults) and what a turn may use (ListModels, ListTools).

A turn is admitted (limits, quotas, the fair queue) before the conversation loop runs it, and settled with
what it used once it ends; the trailing metadata tells the caller its remaining budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from moteur.gateway import validation as check
from moteur.gateway.admission import AdmissionControl
from moteur.gateway.api import convert
from moteur.gateway.api.rpc import Context, authenticated
from moteur.gateway.auth import Authenticator
from moteur.gateway.conversation import Conversation
from moteur.gateway.listing import visible_models
from moteur.gateway.sessions import parse_session_id
from moteur.gateway.tooling import ToolBox
from moteur.gateway.turns import TurnInput, TurnResult
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.v1 import gateway_pb2, router_pb2, router_pb2_grpc, tools_pb2

Settle = Callable[[TurnResult], Awaitable[None]]


class ChatRpcs:
    def __init__(self, auth: Authenticator, conversation: Conversation, admission: AdmissionControl,
                 router: router_pb2_grpc.RouterStub, toolbox: ToolBox) -> None:
        self.auth = auth
        self._conversation = conversation
        self._admission = admission
        self._router = router
        self._toolbox = toolbox

    @authenticated
    async def Chat(self, request: gateway_pb2.ChatRequest, identity: Identity,
                   context: Context) -> gateway_pb2.ChatResponse:
        turn = convert.turn_input(identity, request)
        async with self._admitted(identity, turn, context) as settle:
            result = await self._conversation.chat(identity, check.scope(identity, turn.user), turn)
            await settle(result)
        return convert.chat_response(result)

    @authenticated
    async def ChatStream(self, request: gateway_pb2.ChatRequest, identity: Identity,
                         context: Context) -> AsyncIterator[gateway_pb2.ChatEvent]:
        turn = convert.turn_input(identity, request)
        async with self._admitted(identity, turn, context) as settle:
            async for event in self._conversation.chat_stream(identity, check.scope(identity, turn.user), turn):
                if isinstance(event, TurnResult):
                    await settle(event)
                yield convert.chat_event(event)

    @authenticated
    async def SubmitToolResults(self, request: gateway_pb2.SubmitToolResultsRequest, identity: Identity,
                                context: Context) -> gateway_pb2.ChatResponse:
        session_id = parse_session_id(request.session_id)
        if not request.results:
            raise InvalidArgument("results", "at least one result: one per pending tool call")
        scope = check.scope(identity, identity.user)
        continued = await self._conversation.continuation(identity, scope, session_id, request.results)
        async with self._admitted(identity, continued.turn, context) as settle:
            result = await self._conversation.resume(identity, scope, continued)
            await settle(result)
        return convert.chat_response(result)

    @contextlib.asynccontextmanager
    async def _admitted(self, identity: Identity, turn: TurnInput, context: Context) -> AsyncIterator[Settle]:
        """Admission around a turn; yields how to settle it with its result."""
        async with self._admission.chat_turn(identity, turn) as admitted:
            context.set_trailing_metadata(admitted.metadata())
            yield admitted.settle_turn

    @authenticated
    async def ListModels(self, request: router_pb2.ListModelsRequest, identity: Identity,
                         context: Context) -> router_pb2.ListModelsResponse:
        return await visible_models(self._router, identity)

    @authenticated
    async def ListTools(self, request: tools_pb2.ListToolsRequest, identity: Identity,
                        context: Context) -> tools_pb2.ListToolsResponse:
        return tools_pb2.ListToolsResponse(tools=await self._toolbox.list(identity))
