"""The conversation loop of one chat turn: session → history → model → persisted answer.

Promises: the answer, the question and the token usage are persisted before the caller sees the answer,
in one round trip to the store; when the model call fails (or the caller goes away) the question is
persisted all the same before the error is raised; a turn under an idempotency key runs at most once.
Recalled memories, tool calls and files join this loop in later issues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from pymongo import AsyncMongoClient

from moteur.gateway.idempotency import IdempotencyStore, fingerprint
from moteur.gateway.metrics import CHAT_TOKENS, CHAT_TURNS
from moteur.gateway.sessions import Scope, Session, SessionStore, StoredMessage, new_message
from moteur.gateway.usage import TokenUsage, UsageLedger
from moteur.runtime.channels import mesh_metadata, reconnecting
from moteur.runtime.context import outgoing_timeout
from moteur.runtime.errors import MoteurError, Unavailable, from_rpc_error
from moteur.runtime.identity import Identity
from moteur.runtime.mongo import write_together
from moteur.v1 import common_pb2, router_pb2, router_pb2_grpc

log = structlog.get_logger("moteur.gateway.conversation")

_PROMPT_ROLES = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT,
                 "system": common_pb2.ROLE_SYSTEM}


@dataclass(frozen=True, slots=True)
class TurnInput:
    session_id: str  # '' starts a new session
    user: str
    message: str
    request_type: int = common_pb2.REQUEST_TYPE_UNSPECIFIED
    priority: int = common_pb2.PRIORITY_NORMAL
    model_hint: str = ""
    max_output_tokens: int = 0
    idempotency_key: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return fingerprint(self.session_id, self.user, self.message, str(self.request_type), self.model_hint)


@dataclass(slots=True)
class TurnResult:
    session_id: str
    user_message_id: str
    answer: StoredMessage
    finish_reason: int
    replay: bool = False
    route: dict[str, str] = field(default_factory=dict)

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage.from_dict(self.answer.usage)

    def to_record(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "user_message_id": self.user_message_id,
                "answer": self.answer.to_doc(), "finish_reason": self.finish_reason, "route": self.route}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TurnResult:
        return cls(record["session_id"], record["user_message_id"], StoredMessage.from_doc(record["answer"]),
                   record["finish_reason"], replay=True, route=record.get("route", {}))


@dataclass(frozen=True, slots=True)
class TurnStarted:
    session_id: str
    user_message_id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


TurnEvent = TurnStarted | TextDelta | TurnResult


class Conversation:
    def __init__(
        self, mongo: AsyncMongoClient, sessions: SessionStore, usage: UsageLedger, idempotency: IdempotencyStore,
        router: router_pb2_grpc.RouterStub, call_timeout: float,
    ) -> None:
        self._mongo = mongo
        self._sessions = sessions
        self._usage = usage
        self._idempotency = idempotency
        self._router = router
        self._call_timeout = call_timeout

    async def chat(self, identity: Identity, scope: Scope, turn: TurnInput) -> TurnResult:
        result: TurnResult | None = None
        async for event in self.chat_stream(identity, scope, turn, stream=False):
            if isinstance(event, TurnResult):
                result = event
        assert result is not None, "a turn always ends with its result"
        return result

    async def chat_stream(
        self, identity: Identity, scope: Scope, turn: TurnInput, stream: bool = True
    ) -> AsyncIterator[TurnEvent]:
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
        if turn.session_id:
            session = await self._sessions.get(scope, turn.session_id)
        else:
            session = SessionStore.new(identity.tenant, turn.user, title=turn.message[:80], metadata=turn.metadata)
        question = new_message("user", turn.message)
        request = self._prompt(session, question, turn)
        yield TurnStarted(session.id, question.id)
        try:
            final = None if stream else await self._complete(identity, request)
            if stream:
                async for item in self._stream(identity, request):
                    if isinstance(item, str):
                        yield TextDelta(item)
                    else:
                        final = item
            if final is None:
                raise Unavailable("the router ended the stream without a final answer; retry")
        except BaseException as exc:
            # The turn failed (model down, deadline, caller gone): the question is persisted all the same.
            await asyncio.shield(self._persist_question(session, question))
            outcome = exc.code.name if isinstance(exc, MoteurError) else type(exc).__name__
            CHAT_TURNS.labels(turn.model_hint or "default", outcome).inc()
            raise
        usage = TokenUsage(final.usage.input_tokens, final.usage.output_tokens, final.usage.cost_micro_usd)
        answer = new_message("assistant", final.text, model=final.model, usage=usage.as_dict())
        result = TurnResult(
            session.id, question.id, answer, final.finish_reason,
            route={"route": final.route, "attempts": ",".join(final.attempts),
                   "dropped_messages": str(final.dropped_messages)},
        )
        # Question, answer, session window, usage and idempotency record: one round trip to the store.
        writes = [
            *self._sessions.turn_writes(session, [question, answer]),
            self._usage.record_write(identity, session.user, session.id, final.model, usage),
        ]
        if turn.idempotency_key:
            writes.append(self._idempotency.complete_write(identity.tenant, turn.idempotency_key, result.to_record()))
        await write_together(self._mongo, writes)
        CHAT_TURNS.labels(final.model, "ok").inc()
        CHAT_TOKENS.labels(final.model, "input").inc(usage.input_tokens)
        CHAT_TOKENS.labels(final.model, "output").inc(usage.output_tokens)
        log.info("chat.turn", session_id=session.id, model=final.model, input_tokens=usage.input_tokens,
                 output_tokens=usage.output_tokens, dropped_messages=final.dropped_messages)
        yield result

    async def _persist_question(self, session: Session, question: StoredMessage) -> None:
        try:
            await write_together(self._mongo, self._sessions.turn_writes(session, [question]))
        except Exception:
            log.exception("chat.question_not_persisted", session_id=session.id, message_id=question.id)

    def _prompt(self, session: Session, question: StoredMessage, turn: TurnInput) -> router_pb2.CompleteRequest:
        history = [
            router_pb2.PromptMessage(role=_PROMPT_ROLES[m.role], content=m.content)
            for m in session.recent if m.role in _PROMPT_ROLES
        ]
        history.append(router_pb2.PromptMessage(role=common_pb2.ROLE_USER, content=question.content))
        return router_pb2.CompleteRequest(
            messages=history, request_type=turn.request_type, model_hint=turn.model_hint,
            max_output_tokens=turn.max_output_tokens,
        )

    def _call_options(self, identity: Identity) -> dict[str, Any]:
        return {"metadata": mesh_metadata(identity), "timeout": outgoing_timeout(self._call_timeout)}

    async def _complete(self, identity: Identity, request: router_pb2.CompleteRequest) -> router_pb2.CompleteResponse:
        try:
            async for attempt in reconnecting():
                with attempt:
                    return await self._router.Complete(request, **self._call_options(identity))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "router") from exc
        raise AssertionError("unreachable: reconnecting() re-raises its last error")

    async def _stream(
        self, identity: Identity, request: router_pb2.CompleteRequest
    ) -> AsyncIterator[str | router_pb2.CompleteResponse]:
        try:
            async for attempt in reconnecting():
                with attempt:
                    call = self._router.StreamComplete(request, **self._call_options(identity))
                    await call.wait_for_connection()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "router") from exc
        try:
            async for event in call:
                if event.HasField("delta"):
                    yield event.delta.text
                else:
                    yield event.final
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "router") from exc
        finally:
            call.cancel()
