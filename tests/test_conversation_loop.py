"""The conversation loop (moteur.gateway.conversation.Conversation) against a real store and a scripted model.

The store is a lone SecantusDB; the router and the tools service are fakes served in-process by grpc.aio (a
model that answers what each test scripts, and records what it was asked); memory and files are never called
(turns here do not use memory nor ask for a file). What is checked is read back through SessionStore.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from moteur.gateway.conversation import Conversation
from moteur.gateway.idempotency import IdempotencyStore
from moteur.gateway.outbox import MemoryOutbox
from moteur.gateway.recall import Recall
from moteur.gateway.rendering import FileRenderer
from moteur.gateway.sessions import Scope, SessionStore, new_message
from moteur.gateway.settings import GatewaySettings
from moteur.gateway.tenants import TenantSettings
from moteur.gateway.tooling import ClientTool, ToolBox
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
from moteur.gateway.usage import UsageLedger
from moteur.gateway.windows import SessionWindows
from moteur.runtime.channels import open_channel
from moteur.runtime.errors import FailedPrecondition, MoteurError
from moteur.runtime.group_commit import GroupCommit
from moteur.runtime.identity import MODELS_REVISION_HEADER, Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mesh_tokens import MeshTokenIssuer
from moteur.runtime.mongo import connect_mongo
from moteur.runtime.settings import MongoSettings
from moteur.v1 import (
    common_pb2,
    files_pb2_grpc,
    memory_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from tests.stores import lone_secantusdb

IDENTITY = Identity("acme", "ana", "standard", token="signed-token")  # the fakes do not check the token
SCOPE = Scope("acme", "ana")
MAX_ROUNDS = 2
CALCULATOR = tools_pb2.Tool(name="calculator", description="Arithmetic",
                            input_schema_json='{"type": "object", "properties": {"expression": {"type": "string"}}}')
LOOKUP = ClientTool("crm_lookup", "Look a customer up in the CRM",
                    {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]})


def answer(text: str, input_tokens: int = 10, output_tokens: int = 5) -> router_pb2.CompleteResponse:
    return router_pb2.CompleteResponse(
        text=text, model="fake-model", finish_reason=common_pb2.FINISH_REASON_STOP, route="fake",
        usage=common_pb2.Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost_micro_usd=3))


def calls(*named: tuple[str, str, str]) -> router_pb2.CompleteResponse:
    """The model asks for tools: (id, name, arguments_json) each."""
    return router_pb2.CompleteResponse(
        model="fake-model", finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS,
        usage=common_pb2.Usage(input_tokens=7, output_tokens=2, cost_micro_usd=1),
        tool_calls=[common_pb2.ToolCall(id=i, name=n, arguments_json=a) for i, n, a in named])


@dataclass
class Failure:
    code: grpc.StatusCode
    details: str


Step = router_pb2.CompleteResponse | Failure


class FakeRouter(router_pb2_grpc.RouterServicer):
    """A model that answers its script, one step per call, and records every request."""

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.requests: list[router_pb2.CompleteRequest] = []

    async def _next(self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext) -> \
            router_pb2.CompleteResponse:
        self.requests.append(request)
        assert self.script, "the model was called more often than the test scripted"
        step = self.script.pop(0)
        if isinstance(step, Failure):
            await context.abort(step.code, step.details)
        assert isinstance(step, router_pb2.CompleteResponse)
        context.set_trailing_metadata(((MODELS_REVISION_HEADER, "rev-7"),))
        return step

    async def Complete(self, request, context):
        return await self._next(request, context)

    async def StreamComplete(self, request, context):
        final = await self._next(request, context)
        for word in final.text.split(" "):  # the answer in two or more deltas, then the final event
            yield router_pb2.CompleteEvent(delta=common_pb2.TokenDelta(text=word + " "))
        yield router_pb2.CompleteEvent(final=final)


class FakeTools(tools_pb2_grpc.ToolsServicer):
    """The registry: lists ``tools``, and answers a call with ``run(call)``."""

    def __init__(self) -> None:
        self.tools: list[tools_pb2.Tool] = []
        self.invoked: list[tools_pb2.InvokeRequest] = []
        self.run: Callable[[common_pb2.ToolCall], str] = lambda call: '{"value": 42}'

    async def ListTools(self, request, context):
        return tools_pb2.ListToolsResponse(tools=self.tools)

    async def Invoke(self, request, context):
        self.invoked.append(request)
        return common_pb2.ToolResult(call_id=request.call.id, ok=True, content_json=self.run(request.call))


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with lone_secantusdb(tmp_path_factory.mktemp("conversation-store")) as store:
        yield store.uri + "/"


@pytest.fixture(scope="module")
async def client(store_uri: str) -> AsyncIterator[AsyncMongoClient]:
    mongo = connect_mongo(MongoSettings(mongo_uri=store_uri))
    yield mongo
    await mongo.close()


@dataclass
class Harness:
    conversation: Conversation
    sessions: SessionStore
    db: AsyncDatabase
    router: FakeRouter
    tools: FakeTools
    revisions: list[str] = field(default_factory=list)

    async def events(self, turn: TurnInput, stream: bool = False) -> list[TurnEvent]:
        return [e async for e in self.conversation.chat_stream(IDENTITY, SCOPE, turn, stream=stream)]


@pytest.fixture
async def harness(client: AsyncMongoClient) -> AsyncIterator[Harness]:
    router, tools = FakeRouter(), FakeTools()
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(router, server)
    tools_pb2_grpc.add_ToolsServicer_to_server(tools, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    db = client[f"conversation_{new_id().lower()}"]
    sessions, revisions = SessionStore(db), list[str]()
    settings = GatewaySettings(tool_max_rounds=MAX_ROUNDS, tool_loop_timeout_seconds=20,
                               tool_results_wait_seconds=60, tool_list_cache_seconds=0)
    conversation = Conversation(
        GroupCommit(client), sessions, UsageLedger(db), IdempotencyStore(db), router_pb2_grpc.RouterStub(channel), 5.0,
        on_registry=revisions.append,
        # Memory and files are not served: a turn that called them would fail with UNIMPLEMENTED.
        recall=Recall(memory_pb2_grpc.MemoryStub(channel)),
        outbox=MemoryOutbox(db, memory_pb2_grpc.MemoryStub(channel),
                            MeshTokenIssuer("gateway", Ed25519PrivateKey.generate())),
        tenants=TenantSettings(db), toolbox=ToolBox(tools_pb2_grpc.ToolsStub(channel), 5.0, 0),
        settings=settings, files=FileRenderer(files_pb2_grpc.FilesStub(channel), 5.0),
        windows=SessionWindows(sessions, None),  # no Redis here: every turn reads its session (test_session_windows)
    )
    yield Harness(conversation, sessions, db, router, tools, revisions)
    await channel.close()
    await server.stop(None)
    await client.drop_database(db.name)


def question(message: str, session_id: str = "", **settings: object) -> TurnInput:
    return TurnInput(session_id, "ana", message, use_memory=False, **settings)


def prompt_of(request: router_pb2.CompleteRequest) -> list[tuple[str, str]]:
    return [(common_pb2.Role.Name(m.role).removeprefix("ROLE_").lower(), m.content) for m in request.messages]


async def test_a_turn_persists_question_answer_and_usage_and_the_next_turn_reads_them(harness: Harness) -> None:
    harness.router.script = [answer("Lighthouses guide ships.", 12, 4), answer("Tides follow the moon.", 30, 6)]

    first = await harness.conversation.chat(IDENTITY, SCOPE, question("What do lighthouses do?"))

    assert first.answer.content == "Lighthouses guide ships."
    assert first.usage.as_dict() == {"input_tokens": 12, "output_tokens": 4, "cost_micro_usd": 3}
    stored = await harness.sessions.get(SCOPE, first.session_id)
    assert [(m.role, m.content) for m in stored.recent] == [
        ("user", "What do lighthouses do?"), ("assistant", "Lighthouses guide ships.")]
    assert stored.recent[0].id == first.user_message_id and stored.recent[1].id == first.answer.id
    assert stored.recent[1].usage == {"input_tokens": 12, "output_tokens": 4, "cost_micro_usd": 3}
    ledger = await harness.db["usage"].find({"session_id": first.session_id}).to_list()
    assert [(r["model"], r["input_tokens"], r["output_tokens"]) for r in ledger] == [("fake-model", 12, 4)]
    assert harness.revisions == ["rev-7"]  # the router's registry revision, read from its trailers

    # The next turn of the session, streamed: the model reads the history, the caller gets the deltas.
    events = await harness.events(question("And tides?", first.session_id), stream=True)

    assert events[0] == TurnStarted(first.session_id, events[0].user_message_id)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1 and "".join(deltas).strip() == "Tides follow the moon."
    assert prompt_of(harness.router.requests[1]) == [
        ("user", "What do lighthouses do?"), ("assistant", "Lighthouses guide ships."), ("user", "And tides?")]
    stored = await harness.sessions.get(SCOPE, first.session_id)
    assert [m.content for m in stored.recent] == [
        "What do lighthouses do?", "Lighthouses guide ships.", "And tides?", "Tides follow the moon."]
    assert stored.message_count == 4
    assert await harness.db["usage"].count_documents({"session_id": first.session_id}) == 2


async def test_a_failed_model_call_raises_its_error_and_keeps_the_question(harness: Harness) -> None:
    harness.router.script = [Failure(grpc.StatusCode.INTERNAL, "the model server crashed")]
    turn = question("Will it rain?", idempotency_key="k-rain")
    events: list[TurnEvent] = []

    with pytest.raises(MoteurError) as raised:
        async for event in harness.conversation.chat_stream(IDENTITY, SCOPE, turn, stream=False):
            events.append(event)

    assert raised.value.code is grpc.StatusCode.INTERNAL
    assert "the model server crashed" in raised.value.message
    started = events[0]
    assert isinstance(started, TurnStarted)
    stored = await harness.sessions.get(SCOPE, started.session_id)
    assert [(m.id, m.role, m.content) for m in stored.recent] == [(started.user_message_id, "user", "Will it rain?")]
    assert await harness.db["usage"].count_documents({}) == 0

    # The idempotency key was released: the same request again runs the model (no replay of a failure).
    harness.router.script = [answer("Probably not.")]
    retried = await harness.conversation.chat(IDENTITY, SCOPE, turn)
    assert retried.answer.content == "Probably not." and not retried.replay
    assert len(harness.router.requests) == 2


async def test_the_model_calls_a_registry_tool_and_answers_with_its_result(harness: Harness) -> None:
    harness.tools.tools = [CALCULATOR]
    harness.tools.run = lambda call: json.dumps({"value": eval(json.loads(call.arguments_json)["expression"])})
    harness.router.script = [calls(("c1", "calculator", '{"expression": "6*7"}')), answer("It is 42.")]

    events = await harness.events(question("What is six times seven?"))
    result = events[-1]

    assert isinstance(result, TurnResult) and result.answer.content == "It is 42."
    first, second = harness.router.requests
    assert [t.name for t in first.tools] == ["calculator"]
    assert [(i.call.name, i.call.arguments_json, i.session_id, i.user_id) for i in harness.tools.invoked] == [
        ("calculator", '{"expression": "6*7"}', result.session_id, "ana")]
    # The model is asked again with its call and the tool's result.
    assert [m.tool_calls[0].name for m in second.messages if m.tool_calls] == ["calculator"]
    assert (second.messages[-1].role, second.messages[-1].tool_call_id, second.messages[-1].content) == (
        common_pb2.ROLE_TOOL, "c1", '{"value": 42}')
    started = [e.call.id for e in events if isinstance(e, ToolStarted)]
    finished = [(e.call.id, e.result.content_json) for e in events if isinstance(e, ToolFinished)]
    assert (started, finished) == (["c1"], [("c1", '{"value": 42}')])
    assert result.route["tool_rounds"] == "1" and result.route["tools"] == "offered"
    assert result.usage.as_dict() == {"input_tokens": 17, "output_tokens": 7, "cost_micro_usd": 4}  # both calls
    stored = await harness.sessions.get(SCOPE, result.session_id)
    assert [m.role for m in stored.recent] == ["user", "assistant", "tool", "assistant"]
    assert stored.recent[1].tool_calls == [
        {"id": "c1", "name": "calculator", "arguments_json": '{"expression": "6*7"}'}]
    assert stored.recent[2].tool_result["call_id"] == "c1" and stored.recent[2].tool_result["ok"] is True
    assert stored.recent[3].content == "It is 42."


async def test_a_model_that_keeps_calling_tools_is_stopped_after_the_last_round(harness: Harness) -> None:
    harness.tools.tools = [CALCULATOR]
    harness.router.script = [calls(("", "calculator", '{"expression": "1+1"}'))] * (MAX_ROUNDS + 1)

    result = await harness.conversation.chat(IDENTITY, SCOPE, question("Count for ever"))

    asked = harness.router.requests
    assert len(asked) == MAX_ROUNDS + 1
    assert [len(r.tools) for r in asked] == [1] * MAX_ROUNDS + [0]  # the last call offers no tools
    assert len(harness.tools.invoked) == MAX_ROUNDS
    assert [i.call.id for i in harness.tools.invoked] == [f"call_{n}_0" for n in range(MAX_ROUNDS)]
    assert result.answer.content.startswith(f"I stopped after {MAX_ROUNDS} rounds of tool calls")
    assert "calculator" in result.answer.content
    assert result.route["tool_loop"] == "max_rounds"
    assert result.finish_reason == common_pb2.FINISH_REASON_STOP  # an answer: no calls are left to run
    stored = await harness.sessions.get(SCOPE, result.session_id)
    assert [m.role for m in stored.recent] == ["user", *["assistant", "tool"] * MAX_ROUNDS, "assistant"]
    assert stored.recent[-1].content == result.answer.content


async def test_a_model_that_answers_on_the_last_round_is_not_stopped(harness: Harness) -> None:
    harness.tools.tools = [CALCULATOR]
    harness.router.script = [*[calls(("", "calculator", "{}"))] * MAX_ROUNDS, answer("Done counting.")]

    result = await harness.conversation.chat(IDENTITY, SCOPE, question("Count a bit"))

    assert result.answer.content == "Done counting."
    assert "tool_loop" not in result.route and result.route["tool_rounds"] == str(MAX_ROUNDS)
    assert [len(r.tools) for r in harness.router.requests] == [1] * MAX_ROUNDS + [0]


async def test_a_call_to_the_callers_tool_waits_for_its_result_then_the_turn_goes_on(harness: Harness) -> None:
    harness.router.script = [calls(("", "crm_lookup", '{"email": "ada@example.com"}'))]
    turn = question("Is Ada a customer?", use_tools=False, client_tools=(LOOKUP,), temperature=0.25, stop=("END",),
                    json_schema='{"type": "object"}', json_output=True)

    waiting = await harness.conversation.chat(IDENTITY, SCOPE, turn)

    assert waiting.status == REQUIRES_ACTION
    assert waiting.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert waiting.pending == [
        {"id": "call_0_0", "name": "crm_lookup", "arguments_json": '{"email": "ada@example.com"}'}]
    assert [t.name for t in harness.router.requests[0].tools] == ["crm_lookup"]
    assert harness.tools.invoked == []  # the caller's tool is never run by the registry
    stored = await harness.sessions.get(SCOPE, waiting.session_id)
    assert stored.pending is not None and [c["id"] for c in stored.pending.calls] == ["call_0_0"]
    assert [m.role for m in stored.recent] == ["user", "assistant"]
    assert await harness.db["usage"].count_documents({"session_id": waiting.session_id}) == 1
    # While it waits, the session takes no new question.
    with pytest.raises(FailedPrecondition):
        await harness.conversation.chat(IDENTITY, SCOPE, question("Anything else?", waiting.session_id))

    harness.router.script = [answer("Yes, Ada is a customer since 2021.")]
    continued = await harness.conversation.continuation(IDENTITY, SCOPE, waiting.session_id, [
        common_pb2.ToolResult(call_id="call_0_0", ok=True, content_json='{"customer": true, "since": 2021}')])
    result = await harness.conversation.resume(IDENTITY, SCOPE, continued)

    assert result.status != REQUIRES_ACTION and result.answer.content == "Yes, Ada is a customer since 2021."
    resumed = harness.router.requests[1]
    assert prompt_of(resumed)[0] == ("user", "Is Ada a customer?")
    # The continuation answers the same request: its sampling and the answer's shape are the first one's.
    assert (resumed.temperature, list(resumed.stop), resumed.json_schema, resumed.json_output) == (
        0.25, ["END"], '{"type": "object"}', True)
    assert [c.id for c in resumed.messages[1].tool_calls] == ["call_0_0"]
    assert (resumed.messages[-1].tool_call_id, resumed.messages[-1].content) == (
        "call_0_0", '{"customer": true, "since": 2021}')
    stored = await harness.sessions.get(SCOPE, waiting.session_id)
    assert stored.pending is None
    assert [m.role for m in stored.recent] == ["user", "assistant", "tool", "assistant"]
    assert stored.recent[2].tool_result["call_id"] == "call_0_0"
    # Answered: there is nothing left to submit to.
    with pytest.raises(FailedPrecondition):
        await harness.conversation.continuation(IDENTITY, SCOPE, waiting.session_id, [
            common_pb2.ToolResult(call_id="call_0_0", ok=True, content_json="{}")])


async def test_an_idempotency_key_replays_the_first_answer_without_the_model(harness: Harness) -> None:
    harness.router.script = [answer("Paris.")]
    turn = question("Capital of France?", idempotency_key="k-paris")

    first = await harness.conversation.chat(IDENTITY, SCOPE, turn)
    again = await harness.conversation.chat(IDENTITY, SCOPE, turn)

    assert len(harness.router.requests) == 1
    assert again.replay and not first.replay
    assert (again.session_id, again.user_message_id, again.answer.id, again.answer.content) == (
        first.session_id, first.user_message_id, first.answer.id, "Paris.")
    stored = await harness.sessions.get(SCOPE, first.session_id)
    assert stored.message_count == 2
    # The same key for another request is refused rather than replayed.
    with pytest.raises(FailedPrecondition):
        await harness.conversation.chat(IDENTITY, SCOPE, question("Capital of Spain?", idempotency_key="k-paris"))


async def test_turns_of_one_session_run_side_by_side_without_losing_messages(harness: Harness) -> None:
    harness.router.script = [answer("First.")]
    first = await harness.conversation.chat(IDENTITY, SCOPE, question("One?"))
    harness.router.script = [answer("Second."), answer("Third.")]

    await asyncio.gather(harness.conversation.chat(IDENTITY, SCOPE, question("Two?", first.session_id)),
                         harness.conversation.chat(IDENTITY, SCOPE, question("Three?", first.session_id)))

    stored = await harness.sessions.get(SCOPE, first.session_id)
    assert stored.message_count == 6
    assert sorted(m.content for m in stored.recent) == sorted(["One?", "First.", "Two?", "Three?", "Second.",
                                                               "Third."])


async def test_a_stateless_turn_reads_the_callers_history_and_stores_only_its_usage(harness: Harness) -> None:
    """The OpenAI API without a session: the caller's messages are the prompt, the settings reach the model,
    and nothing but the usage record is written; a turn going on from tool results asks nothing new."""
    harness.router.script = [answer('{"city": "Lyon"}', 40, 6), calls(("c9", "crm_lookup", '{"email": "a@b.c"}')),
                             answer("Ana lives in Lyon.", 50, 5)]
    history = (new_message("system", "Réponds en JSON."), new_message("user", "Bonjour"),
               new_message("assistant", "Bonjour ! Que puis-je faire ?"))
    schema = '{"type": "object", "properties": {"city": {"type": "string"}}}'
    first = await harness.conversation.chat(IDENTITY, SCOPE, question(
        "Où habite Ana ?", history=history, json_schema=schema, json_output=True, temperature=0.3, stop=("###",)))
    asked = harness.router.requests[0]
    assert prompt_of(asked) == [("system", "Réponds en JSON."), ("user", "Bonjour"),
                                ("assistant", "Bonjour ! Que puis-je faire ?"), ("user", "Où habite Ana ?")]
    assert asked.json_schema == schema and asked.json_output and list(asked.stop) == ["###"]
    assert abs(asked.temperature - 0.3) < 1e-6
    assert first.session_id == "" and first.answer.content == '{"city": "Lyon"}'
    # The caller's tool, stateless: its call comes back, and the caller's next request brings its result.
    waiting = await harness.conversation.chat(IDENTITY, SCOPE, question(
        "Look Ana up", history=(), client_tools=(LOOKUP,)))
    assert waiting.pending == [{"id": waiting.pending[0]["id"], "name": "crm_lookup",
                                "arguments_json": '{"email": "a@b.c"}'}]
    went_on = await harness.conversation.chat(IDENTITY, SCOPE, question("", history=(
        new_message("user", "Look Ana up"),
        new_message("assistant", "", tool_calls=[{"id": "c9", "name": "crm_lookup", "arguments_json": "{}"}]),
        new_message("tool", '{"city": "Lyon"}', tool_result={"call_id": "c9"}))))
    assert prompt_of(harness.router.requests[2])[-1] == ("tool", '{"city": "Lyon"}')
    assert went_on.answer.content == "Ana lives in Lyon."
    assert await harness.db["sessions"].count_documents({}) == 0
    assert await harness.db["messages"].count_documents({}) == 0
    assert await harness.db["memory_outbox"].count_documents({}) == 0
    assert await harness.db["usage"].count_documents({"session_id": ""}) == 3
