"""The conversation loop of one chat turn: session → history + memories → model ⇄ tools → persisted answer.

Promises: the answer, the question and the token usage are persisted before the caller sees the answer,
in one round trip to the store; when the model call fails (or the caller goes away) the question is
persisted all the same before the error is raised; a turn under an idempotency key runs at most once.

The tool loop: when the model asks for tools, the registry's are invoked (in parallel), their results
appended, and the model asked again — at most ``tool_max_rounds`` rounds within ``tool_loop_timeout``.
Every round (the model's calls and their results) is persisted with the answer in its one write or, when
the turn fails, with the question, as the question itself is. When the model calls one of the caller's
own tools, the turn stops with status REQUIRES_ACTION: the session keeps the pending calls (and what the
continuation needs) until the caller's SubmitToolResults continues the same loop. A model that keeps
calling tools past the last round is asked once without tools, and if it still calls them the turn ends
with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import structlog

from moteur.gateway.idempotency import IdempotencyStore
from moteur.gateway.metrics import CHAT_TOKENS, CHAT_TURNS, GATEWAY_TOOL_CALLS, TOOL_LOOPS, TOOL_ROUNDS
from moteur.gateway.outbox import MemoryOutbox
from moteur.gateway.recall import OFF, Recall, Recollection
from moteur.gateway.rendering import FileRenderer, RenderFailed, file_ref
from moteur.gateway.response_cache import ResponseCache
from moteur.gateway.sessions import Scope, Session, SessionStore, StoredMessage, new_message
from moteur.gateway.settings import GatewaySettings
from moteur.gateway.tenants import TenantSettings, TenantSwitches
from moteur.gateway.tooling import (
    ToolBox,
    TurnTools,
    check_client_results,
    model_view,
    result_doc,
)
from moteur.gateway.turns import (
    REQUIRES_ACTION,
    Continuation,
    PendingTurn,
    TextDelta,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnInput,
    TurnResult,
    TurnStarted,
)
from moteur.gateway.usage import TokenUsage, UsageLedger
from moteur.gateway.windows import Lease, SessionWindows
from moteur.runtime.channels import call_service_with_trailers, stream_service
from moteur.runtime.context import outgoing_timeout
from moteur.runtime.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    MoteurError,
    Unavailable,
)
from moteur.runtime.group_commit import GroupCommit
from moteur.runtime.identity import MODELS_REVISION_HEADER, Identity, metadata_value
from moteur.runtime.protonames import ROLES
from moteur.v1 import common_pb2, files_pb2, router_pb2, router_pb2_grpc

log = structlog.get_logger("moteur.gateway.conversation")


@dataclass(slots=True)
class _Loop:
    """A turn in progress: what the next model call reads, and what is persisted already."""

    turn: TurnInput
    question: StoredMessage
    prompt: list[router_pb2.PromptMessage]
    tools: TurnTools
    memory_prompt: str
    route: dict[str, str]
    deadline: float  # time.monotonic() by which the loop must end
    question_stored: bool = False
    rounds: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    unsaved: list[StoredMessage] = field(default_factory=list)  # results to persist with the next write
    pending_id: str = ""  # a continued turn: the pending turn it took
    resumed_at_round: int = 0
    lease: Lease | None = None  # how the turn opened its session's window (moteur.gateway.windows)
    cache_context: str | None = None  # the response cache's digest of this turn's context, when it is asked
    cached: bool = False  # the answer came from the response cache

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class Conversation:
    def __init__(
        self, commit: GroupCommit, sessions: SessionStore, usage: UsageLedger, idempotency: IdempotencyStore,
        router: router_pb2_grpc.RouterStub, call_timeout: float,
        on_registry: Callable[[str], None] = lambda revision: None,
        *, recall: Recall, outbox: MemoryOutbox, tenants: TenantSettings, toolbox: ToolBox, settings: GatewaySettings,
        files: FileRenderer, windows: SessionWindows, cache: ResponseCache | None = None,
    ) -> None:
        self._cache = cache
        self._windows = windows
        self._files = files
        self._toolbox = toolbox
        self._settings = settings
        self._tenants = tenants
        self._recall = recall
        self._outbox = outbox
        self._commit = commit
        self._sessions = sessions
        self._usage = usage
        self._idempotency = idempotency
        self._router = router
        self._call_timeout = call_timeout
        self._on_registry = on_registry  # told the router's registry revision seen on each answer

    async def chat(self, identity: Identity, scope: Scope, turn: TurnInput) -> TurnResult:
        result: TurnResult | None = None
        async for event in self.chat_stream(identity, scope, turn, stream=False):
            if isinstance(event, TurnResult):
                result = event
        assert result is not None, "a turn always ends with its result"
        return result

    async def chat_stream(
        self, identity: Identity, scope: Scope, turn: TurnInput, stream: bool = True
    ) -> AsyncGenerator[TurnEvent, None]:
        """Started, text deltas (when streaming), then the persisted result — or an error."""
        if turn.idempotency_key:
            replay = await self._idempotency.claim(identity.tenant, turn.idempotency_key, turn.fingerprint())
            if replay is not None:
                result = TurnResult.from_record(replay.answer)
                CHAT_TURNS.labels(result.answer.model, "replay").inc()
                yield TurnStarted(result.session_id, result.user_message_id)
                if stream:
                    yield TextDelta(result.answer.content)
                yield result
                return
        completed = False
        try:
            async for event in self._run(identity, scope, turn, stream):
                completed = isinstance(event, TurnResult)
                yield event
        finally:
            if turn.idempotency_key and not completed:
                await asyncio.shield(self._idempotency.release(identity.tenant, turn.idempotency_key))

    async def _run(self, identity: Identity, scope: Scope, turn: TurnInput, stream: bool) -> AsyncIterator[TurnEvent]:
        switches = await self._tenants.get(identity.tenant)
        # The session (with memories), the tenant's tools and the file template do not depend on each other.
        (session, lease, recollection), tools, _ = await asyncio.gather(
            self._session_and_memories(identity, scope, turn, recall=turn.use_memory and switches.memory_recall),
            self._tools(identity, turn),
            self._check_file(identity, turn),
        )
        _refuse_if_pending(session)
        question = new_message("user", turn.message)
        # A stateless turn stores no message, so memory learns nothing from it (it recalls all the same).
        learns = turn.use_memory and switches.fact_extraction and switches.message_memory and not turn.stateless
        learning = self._recall.learn(identity, session.user, session.id, question.id, question.content) \
            if session.user and learns else None
        memory = recollection.prompt()
        loop = _Loop(turn, question, self._history(session, memory), tools, memory, _memory_summary(recollection),
                     self._loop_deadline(), lease=lease)
        if self._cache is not None and self._cache.asked(turn, switches.response_cache):
            loop.cache_context = self._cache.context(identity, turn, switches.response_cache, loop.prompt,
                                                     tools.model_tools())
        if turn.message:  # a stateless turn may go on from tool results instead
            loop.prompt.append(router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=question.content))
        yield TurnStarted(session.id, question.id)
        with self._outbox.chatting():
            async for event in self._loop(identity, session, loop, stream, switches):
                if isinstance(event, TurnResult) and learning is not None:
                    await learning  # what the question stated is known before its answer is given
                yield event

    async def continuation(self, identity: Identity, scope: Scope, session_id: str,
                           results: Sequence[common_pb2.ToolResult]) -> Continuation:
        """SubmitToolResults checked against the session's pending turn (nothing is changed yet)."""
        session = await self._sessions.get(scope, session_id)
        pending = session.pending
        if pending is None:
            raise FailedPrecondition(f"no turn of session {session_id} waits for tool results; SubmitToolResults "
                                     "answers a ChatResponse whose status was REQUIRES_ACTION")
        if pending.expires_at.replace(tzinfo=UTC) < datetime.now(UTC):
            raise FailedPrecondition(f"the turn of session {session_id} waited for tool results until "
                                     f"{pending.expires_at:%Y-%m-%d %H:%M:%S} UTC and expired; send the "
                                     "question again")
        tools = {t.name: t for t in pending.turn.client_tools}
        ordered = check_client_results(results, pending.calls, tools)
        turn = TurnInput.continued(session, pending.question.content, pending.turn)
        return Continuation(session, turn, pending, ordered)

    async def resume(self, identity: Identity, scope: Scope, continued: Continuation) -> TurnResult:
        """Continue a turn with the caller's tool results: the same loop, from where it stopped."""
        session, pending = continued.session, continued.pending
        if not await self._sessions.claim_pending(scope, session.id, pending.id, self._settings.
                                                  tool_loop_timeout_seconds):
            raise Aborted(f"another SubmitToolResults is continuing the turn of session {session.id}; wait for "
                          "its answer")
        switches = await self._tenants.get(identity.tenant)
        loop = _Loop(continued.turn, pending.question, self._history(session, pending.memory_prompt),
                     await self._tools(identity, continued.turn), pending.memory_prompt, dict(pending.route),
                     self._loop_deadline(), question_stored=True, rounds=pending.rounds, pending_id=pending.id,
                     resumed_at_round=pending.rounds)
        for answered in continued.results:
            message = new_message("tool", model_view(answered), tool_result=result_doc(answered))
            loop.unsaved.append(message)
            loop.prompt.append(_prompt_message(message))
            GATEWAY_TOOL_CALLS.labels("caller", "ok" if answered.ok else answered.error_code).inc()
        result: TurnResult | None = None
        try:
            async for event in self._loop(identity, session, loop, False, switches):
                if isinstance(event, TurnResult):
                    result = event
        except BaseException:
            # The caller may submit again: nothing of this attempt was persisted but finished rounds.
            await asyncio.shield(self._sessions.release_pending(scope, session.id, pending.id))
            raise
        assert result is not None, "a turn always ends with its result"
        return result

    async def _check_file(self, identity: Identity, turn: TurnInput) -> None:
        if turn.output_format:
            await self._files.check(identity, turn.output_format, turn.output_template)

    async def _tools(self, identity: Identity, turn: TurnInput) -> TurnTools:
        tools = await self._toolbox.for_turn(identity, turn.client_tools,
                                             turn.use_tools and turn.tool_choice != "none")
        tools.check_choice(turn.tool_choice)
        return tools

    def _loop_deadline(self) -> float:
        return time.monotonic() + self._settings.tool_loop_timeout_seconds

    async def _loop(
        self, identity: Identity, session: Session, loop: _Loop, stream: bool, switches: TenantSwitches
    ) -> AsyncIterator[TurnEvent]:
        """Model ⇄ tools until an answer, the caller's tools, the last round, or the deadline."""
        settings = self._settings
        offered = loop.tools.model_tools()
        try:
            cached = await self._from_cache(identity, loop)
            if cached is not None and stream:
                yield TextDelta(cached.text)
            while cached is None:
                last_round = loop.rounds >= settings.tool_max_rounds
                request = self._request(loop, offered, tools_off=last_round)
                final = None
                if stream:
                    async for item in self._stream(identity, request, loop.remaining()):
                        if isinstance(item, str):
                            yield TextDelta(item)
                        else:
                            final = item
                else:
                    final = await self._complete(identity, request, loop.remaining())
                if final is None:
                    raise Unavailable("the router ended the stream without a final answer; retry")
                loop.usage += TokenUsage(final.usage.input_tokens, final.usage.output_tokens,
                                         final.usage.cost_micro_usd)
                if not final.tool_calls:
                    break
                if last_round:
                    # Offered no tools, the model called some all the same: the loop ends here, and says so.
                    TOOL_LOOPS.labels("max_rounds").inc()
                    loop.route["tool_loop"] = "max_rounds"
                    final.text = (f"I stopped after {loop.rounds} rounds of tool calls without reaching an answer "
                                  f"(the model kept asking for {', '.join(sorted({c.name for c in final.tool_calls}))}"
                                  "). Try a narrower question.")
                    final.finish_reason = common_pb2.FINISH_REASON_STOP  # an answer, not calls left to run
                    break
                calls = _numbered(final.tool_calls, loop.rounds)
                asking = new_message("assistant", final.text, model=final.model,
                                     tool_calls=[{"id": c.id, "name": c.name, "arguments_json": c.arguments_json}
                                                 for c in calls])
                for call in calls:
                    yield ToolStarted(call, call.name in loop.tools.client)
                theirs = [c for c in calls if c.name in loop.tools.client]
                ours = [c for c in calls if c.name not in loop.tools.client]
                results: dict[str, common_pb2.ToolResult] = {}
                for finished in self._invoke(identity, session, loop, ours):
                    call, result = await finished
                    results[call.id] = result
                    yield ToolFinished(call, result)
                answered = [new_message("tool", model_view(results[c.id]), tool_result=result_doc(results[c.id]))
                            for c in ours]
                loop.rounds += 1
                if theirs:
                    yield await self._wait_for_caller(identity, session, loop, asking, answered, theirs, final)
                    return
                loop.unsaved += [asking, *answered]
                loop.prompt += [_prompt_message(asking), *(_prompt_message(m) for m in answered)]
        except BaseException as exc:
            # The turn failed (model down, deadline, caller gone): the question is persisted all the same.
            # A continuation that did no round yet keeps its turn pending: the caller may submit again.
            if not (loop.pending_id and loop.rounds == loop.resumed_at_round):
                await asyncio.shield(self._persist_failed(session, loop, switches.message_memory))
            outcome = exc.code.name if isinstance(exc, MoteurError) else type(exc).__name__
            CHAT_TURNS.labels(loop.turn.model_hint or "default", outcome).inc()
            if offered:
                TOOL_LOOPS.labels("failed").inc()
            raise
        answer = cached or final
        assert answer is not None, "the loop ends with an answer or raises"
        yield await self._answer(identity, session, loop, answer, switches)

    async def _from_cache(self, identity: Identity, loop: _Loop) -> router_pb2.CompleteResponse | None:
        """The answer the response cache kept for a question near this one, as the router would give it."""
        if self._cache is None or loop.cache_context is None:
            return None
        hit = await self._cache.lookup(identity, loop.cache_context, loop.question.content)
        if hit is None:
            loop.route["cache"] = "miss"
            return None
        loop.cached = True
        loop.route |= {"cache": "hit", "cache_score": f"{hit.score:.4f}",
                       "cached_at": hit.cached_at.isoformat(timespec="seconds")}
        return router_pb2.CompleteResponse(text=hit.content, model=hit.model, route=hit.route, route_decision="cache",
                                           finish_reason=common_pb2.FINISH_REASON_STOP)

    def _invoke(self, identity: Identity, session: Session, loop: _Loop,
                calls: Sequence[common_pb2.ToolCall]) -> list[asyncio.Future[Any]]:
        return self._toolbox.invoke_all(identity, session.id, session.user, calls, loop.tools,
                                        min(loop.remaining(), outgoing_timeout(self._call_timeout)),
                                        self._settings.tool_max_parallel)

    def _request(self, loop: _Loop, offered: list[router_pb2.ModelTool], tools_off: bool) -> router_pb2.CompleteRequest:
        turn = loop.turn
        request = router_pb2.CompleteRequest(
            messages=loop.prompt, request_type=cast(common_pb2.RequestType, turn.request_type),
            model_hint=turn.model_hint,
            max_output_tokens=turn.max_output_tokens, allow_model_substitution=turn.allow_model_substitution,
            json_output=turn.json_output, json_schema=turn.json_schema, stop=turn.stop,
        )
        if turn.temperature is not None:
            request.temperature = turn.temperature
        if turn.top_p is not None:
            request.top_p = turn.top_p
        if offered and not tools_off:
            request.tools.extend(offered)
            # A named or required tool is forced once: after its result, the model answers freely.
            request.tool_choice = turn.tool_choice if loop.rounds == 0 or turn.tool_choice == "none" else ""
        return request

    async def _persist_round(self, identity: Identity, session: Session, loop: _Loop,
                             messages: list[StoredMessage], pending: TurnResult | None = None) -> None:
        """One round of tool calls and results (with the question, the first time) in one write; a round
        that waits for the caller also records its usage and its idempotent answer."""
        stored = [*([] if loop.question_stored else [loop.question]), *loop.unsaved, *messages]
        pending_turn = pending.pending_turn if pending is not None else None
        writes: list[Any] = [] if loop.turn.stateless else list(self._sessions.turn_writes(session, stored,
                                                                                            pending_turn))
        if pending is not None:
            writes.append(self._usage.record_write(identity, session.user, session.id, messages[0].model, loop.usage))
            if loop.turn.idempotency_key:
                writes.append(self._idempotency.complete_write(identity.tenant, loop.turn.idempotency_key,
                                                               pending.to_record()))
        await self._commit.write(writes)
        session.stored, session.pending = True, pending_turn
        loop.question_stored, loop.unsaved = True, []

    async def _wait_for_caller(
        self, identity: Identity, session: Session, loop: _Loop, asking: StoredMessage,
        answered: list[StoredMessage], theirs: list[common_pb2.ToolCall], final: router_pb2.CompleteResponse,
    ) -> TurnResult:
        """Persist the round and what its continuation needs; answer REQUIRES_ACTION."""
        asking.usage = loop.usage.as_dict()
        route = {**loop.route, **_route_summary(final), "tool_rounds": str(loop.rounds), "tools": loop.tools.status}
        calls = [{"id": c.id, "name": c.name, "arguments_json": c.arguments_json} for c in theirs]
        expires = datetime.now(UTC) + timedelta(seconds=self._settings.tool_results_wait_seconds)
        result = TurnResult(session.id, loop.question.id, asking, common_pb2.FINISH_REASON_TOOL_CALLS, route=route,
                            status=REQUIRES_ACTION, pending=calls)
        result.pending_turn = PendingTurn(
            asking.id, tuple(calls), loop.rounds, expires, datetime.now(UTC), loop.memory_prompt, dict(loop.route),
            loop.question, loop.turn.continuation(),
        )
        await self._persist_round(identity, session, loop, [asking, *answered], result)
        TOOL_LOOPS.labels("requires_action").inc()
        TOOL_ROUNDS.observe(loop.rounds)
        log.info("chat.requires_action", session_id=session.id, calls=[c.name for c in theirs], rounds=loop.rounds)
        return result

    async def _answer(self, identity: Identity, session: Session, loop: _Loop, final: router_pb2.CompleteResponse,
                      switches: TenantSwitches) -> TurnResult:
        turn, question, usage = loop.turn, loop.question, loop.usage
        answer = new_message("assistant", final.text, model=final.model, usage=usage.as_dict())
        route = {**_route_summary(final), **loop.route}
        if loop.tools.status != "off":
            route |= {"tools": loop.tools.status, "tool_rounds": str(loop.rounds)}
        unrendered = await self._render(identity, session, loop, answer, route)
        result = TurnResult(session.id, question.id, answer, final.finish_reason, route=route)
        # Question, answer, session window, usage and idempotency record: one round trip to the store.
        fresh = [*([] if loop.question_stored else [question]), *loop.unsaved, answer]
        writes = [
            *([] if turn.stateless else self._sessions.turn_writes(session, fresh)),
            self._usage.record_write(identity, session.user, session.id, final.model, usage),
        ]
        if turn.idempotency_key:
            writes.append(self._idempotency.complete_write(identity.tenant, turn.idempotency_key, result.to_record()))
        outbox = self._outbox if switches.message_memory and not turn.stateless else None
        if outbox is not None:
            extract = turn.use_memory and switches.fact_extraction
            writes.extend(outbox.writes(session, [question, answer], extract=extract))
        await self._commit.write(writes)
        # A question stored by an earlier round of this turn is not in the session as opened: keep nothing then.
        if not turn.stateless:
            await self._windows.written(session, loop.lease, None if loop.question_stored else fresh)
        if outbox is not None:
            outbox.written()
        self._keep(identity, session, loop, final, unrendered, switches.response_cache.ttl_seconds)
        if loop.tools.status == "offered":
            TOOL_LOOPS.labels("answered" if "tool_loop" not in loop.route else "max_rounds").inc()
            TOOL_ROUNDS.observe(loop.rounds)
        CHAT_TURNS.labels(final.model, "ok").inc()
        CHAT_TOKENS.labels(final.model, "input").inc(usage.input_tokens)
        CHAT_TOKENS.labels(final.model, "output").inc(usage.output_tokens)
        log.info("chat.turn", session_id=session.id, model=final.model, input_tokens=usage.input_tokens,
                 output_tokens=usage.output_tokens, dropped_messages=final.dropped_messages, tool_rounds=loop.rounds)
        if unrendered is not None:
            raise RenderFailed(unrendered, session.id, answer.id)
        return result

    def _keep(self, identity: Identity, session: Session, loop: _Loop, final: router_pb2.CompleteResponse,
              unrendered: MoteurError | None, ttl_seconds: int) -> None:
        """A plain answer, asked of the cache and not found there, is kept for the next question like it."""
        if self._cache is None or loop.cache_context is None or loop.cached:
            return
        if loop.rounds or final.tool_calls or final.finish_reason != common_pb2.FINISH_REASON_STOP \
                or unrendered is not None or not final.text.strip():
            return
        self._cache.keep(identity, loop.cache_context, loop.question.content, session.user, final.text, final.model,
                         final.route, ttl_seconds)

    async def _render(self, identity: Identity, session: Session, loop: _Loop, answer: StoredMessage,
                      route: dict[str, str]) -> MoteurError | None:
        """The answer into the file the turn asked for; the failure, if any, to raise once it is persisted."""
        turn = loop.turn
        if not turn.output_format:
            return None
        request = files_pb2.RenderRequest(format=cast(common_pb2.FileFormat, turn.output_format),
                                          template=turn.output_template,
                                          markdown=answer.content, title=_title(loop.question.content),
                                          user_id=session.user, session_id=session.id)
        try:
            info = await self._files.render(identity, request)
        except MoteurError as exc:
            return exc
        answer.file = file_ref(info)
        if info.note:
            route["file_note"] = info.note
        return None

    async def _persist_failed(self, session: Session, loop: _Loop, to_memory: bool) -> None:
        """A failed turn's question (unless stored) and the rounds it did, in one write."""
        if loop.turn.stateless:
            return
        question = [] if loop.question_stored else [loop.question]
        if not question and not loop.unsaved:
            return
        try:
            outbox = self._outbox.writes(session, question) if to_memory else []
            await self._commit.write([*self._sessions.turn_writes(session, [*question, *loop.unsaved]), *outbox])
            self._outbox.written()
        except Exception:
            log.exception("chat.question_not_persisted", session_id=session.id, message_id=loop.question.id)

    async def drop_window(self, tenant: str, session_id: str) -> None:
        """The session was deleted: no gateway may answer from a window of it any more."""
        await self._windows.forget(tenant, session_id)

    async def forget_session(self, tenant: str, session_id: str) -> None:
        """A deleted session's messages leave memory as well (through the outbox)."""
        await self._outbox.forget_session(tenant, session_id)

    async def forget_user(self, tenant: str, user: str) -> None:
        """A forgotten user's messages still waiting in the outbox never reach memory."""
        await self._outbox.forget_user(tenant, user)

    async def _session_and_memories(
        self, identity: Identity, scope: Scope, turn: TurnInput, recall: bool
    ) -> tuple[Session, Lease | None, Recollection]:
        """The session (its window kept here, read, or new), its window's lease, and what memory recalls of its
        user for the question; session and memories are fetched side by side when the user is known first."""
        recall = recall and bool(turn.message)
        early = self._recall.search(identity, turn.user, turn.message) if recall and turn.user else None
        lease: Lease | None = None
        if turn.history is not None:
            session = _stateless_session(identity.tenant, turn.user, turn.history)
            recollection = await early if early is not None else OFF
        elif turn.session_id:
            if early is not None:
                (session, lease), recollection = await asyncio.gather(
                    self._windows.open(scope, turn.session_id), early)
            else:
                (session, lease), recollection = await self._windows.open(scope, turn.session_id), OFF
        else:
            session = SessionStore.new(identity.tenant, turn.user, title=turn.message[:80], metadata=turn.metadata)
            recollection = await early if early is not None else OFF
        if not recall or not session.user:
            return session, lease, OFF  # memories are a user's: a turn without one recalls nothing
        if early is None:
            recollection = await self._recall.search(identity, session.user, turn.message)
        return session, lease, self._recall.fit(recollection, {m.id for m in session.recent})

    @staticmethod
    def _history(session: Session, memory: str) -> list[router_pb2.PromptMessage]:
        """The prompt before this turn's question: recalled memories, then the session's recent messages."""
        history = [router_pb2.PromptMessage(role=common_pb2.ROLE_SYSTEM, content=memory)] if memory else []
        return history + [_prompt_message(m) for m in session.recent if m.role in ROLES]

    def _timeout(self, remaining: float) -> float:
        if remaining <= 0:
            raise DeadlineExceeded(f"the turn used its {self._settings.tool_loop_timeout_seconds:g} s for model and "
                                   "tool calls (MOTEUR_TOOL_LOOP_TIMEOUT_SECONDS); ask a narrower question")
        return min(outgoing_timeout(self._call_timeout), remaining)

    def _trailers(self, trailing: grpc.aio.Metadata) -> None:
        self._on_registry(metadata_value(trailing, MODELS_REVISION_HEADER))

    async def _complete(
        self, identity: Identity, request: router_pb2.CompleteRequest, remaining: float
    ) -> router_pb2.CompleteResponse:
        response, trailing = await call_service_with_trailers(
            self._router.Complete, request, "router", identity, self._timeout(remaining))
        self._trailers(trailing)
        return response

    async def _stream(
        self, identity: Identity, request: router_pb2.CompleteRequest, remaining: float
    ) -> AsyncIterator[str | router_pb2.CompleteResponse]:
        events = stream_service(self._router.StreamComplete, request, "router", identity, self._timeout(remaining),
                                on_trailers=self._trailers)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event.delta.text if event.HasField("delta") else event.final


def _title(question: str) -> str:
    """A file's title (and name) from the question: its first line, as far as a word boundary near 80."""
    line = next((text.strip() for text in question.splitlines() if text.strip()), "answer")
    return line if len(line) <= 80 else line[:80].rsplit(" ", 1)[0]


def _stateless_session(tenant: str, user: str, history: Sequence[StoredMessage]) -> Session:
    """What a stateless turn runs in: the caller's messages, no id, never stored."""
    now = datetime.now(UTC)
    return Session("", tenant, user, "", now, now, len(history), {}, list(history), stored=False)


def _refuse_if_pending(session: Session) -> None:
    pending = session.pending
    if pending is not None and pending.expires_at.replace(tzinfo=UTC) > datetime.now(UTC):
        calls = ", ".join(c["id"] for c in pending.calls)
        raise FailedPrecondition(f"session {session.id} has a turn waiting for the results of tool call(s) "
                                 f"{calls}: send them with SubmitToolResults first")


def _numbered(calls: Sequence[common_pb2.ToolCall], round_: int) -> list[common_pb2.ToolCall]:
    """The model's calls with ids unique in the session (some models give none, or repeat them)."""
    seen: set[str] = set()
    numbered = []
    for n, call in enumerate(calls):
        call_id = call.id if call.id and call.id not in seen else f"call_{round_}_{n}"
        seen.add(call_id)
        numbered.append(common_pb2.ToolCall(id=call_id, name=call.name, arguments_json=call.arguments_json))
    return numbered


def _prompt_message(message: StoredMessage) -> router_pb2.PromptMessage:
    prompt = router_pb2.PromptMessage(role=ROLES[message.role], content=message.content)
    if message.tool_calls:
        prompt.tool_calls.extend(common_pb2.ToolCall(**c) for c in message.tool_calls)
    if message.tool_result:
        prompt.tool_call_id = message.tool_result["call_id"]
    return prompt


def _memory_summary(recollection: Recollection) -> dict[str, str]:
    """Whether memory was asked, and which memories went into the prompt."""
    summary = {"memory": recollection.status}
    if recollection.memories:
        summary["memories"] = ",".join(m.memory_id for m in recollection.memories)
    return summary


def _route_summary(final: router_pb2.CompleteResponse) -> dict[str, str]:
    """How the router answered, for the response's route metadata."""
    summary = {"route": final.route, "route_decision": final.route_decision, "attempts": ",".join(final.attempts),
               "dropped_messages": str(final.dropped_messages)}
    if final.route_decision == "classifier":
        summary["route_score"] = f"{final.route_score:.3f}"
        type_name = common_pb2.RequestType.Name(final.classified_as)
        summary["classified_as"] = type_name.removeprefix("REQUEST_TYPE_").lower()
    return summary
