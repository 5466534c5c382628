"""The gateway's OpenAI-compatible HTTP API (issue 19): what services that speak the OpenAI API call.

The same keys (``Authorization: Bearer``), the same errors (in OpenAI's JSON, moteur.gateway.http.errors) and
the same admission, turn and code behind it as the gRPC API: this layer only translates (completions.py).
Served: ``POST /v1/chat/completions`` (streamed or not), ``POST /v1/embeddings``, ``GET /v1/models``,
``GET /healthz``. Once the gateway drains, as gRPC refuses new calls, a new request answers 503 with
``Retry-After`` (another replica answers it) and ``/healthz`` 503, while requests under way finish.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from moteur.gateway import validation as check
from moteur.gateway.admission import AdmissionControl, AdmittedTurn
from moteur.gateway.auth import Authenticator, api_key
from moteur.gateway.conversation import Conversation
from moteur.gateway.http import completions
from moteur.gateway.http.completions import ChatCompletionRequest
from moteur.gateway.http.embeddings import EmbeddingsRequest, embeddings_response
from moteur.gateway.http.embeddings import estimate_tokens as estimate_embedded
from moteur.gateway.http.errors import error_body, error_response, http_error
from moteur.gateway.listing import visible_models
from moteur.gateway.metrics import HTTP_LATENCY, HTTP_REQUESTS
from moteur.gateway.sessions import Scope
from moteur.gateway.turns import TurnInput, TurnResult, TurnStarted
from moteur.gateway.usage import TokenUsage, UsageLedger
from moteur.runtime.channels import call_service
from moteur.runtime.context import outgoing_timeout, request_id_var
from moteur.runtime.errors import Unavailable
from moteur.runtime.group_commit import GroupCommit
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.interceptors import translate_exception
from moteur.v1 import memory_pb2, memory_pb2_grpc, router_pb2_grpc

log = structlog.get_logger("moteur.gateway.http")
_tracer = trace.get_tracer("moteur.gateway.http")

Handler = Callable[[Request, Identity], Awaitable[Response]]


@dataclass(slots=True)
class HttpApi:
    """What the HTTP API calls: the same parts as the gRPC API."""

    auth: Authenticator
    router: router_pb2_grpc.RouterStub
    conversation: Conversation
    admission: AdmissionControl
    memory: memory_pb2_grpc.MemoryStub
    usage: UsageLedger
    commit: GroupCommit
    draining: bool = False

    def app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self._authenticated("/v1/chat/completions", self.chat_completions),
                  methods=["POST"]),
            Route("/v1/embeddings", self._authenticated("/v1/embeddings", self.embeddings), methods=["POST"]),
            Route("/v1/models", self._authenticated("/v1/models", self.models), methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    def drain(self) -> None:
        """The gateway is stopping: new requests are refused, those under way finish."""
        self.draining = True

    async def health(self, request: Request) -> Response:
        if self.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "serving"})

    async def models(self, request: Request, identity: Identity) -> Response:
        listed = await visible_models(self.router, identity)
        return JSONResponse({"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": m.provider} for m in listed.models]})

    async def embeddings(self, request: Request, identity: Identity) -> Response:
        """memory's Embed, within the caller's limits; charged to its usage like a turn's input."""
        asked = EmbeddingsRequest.parse(await request.body())
        texts = asked.texts()
        user = check.acting_user(identity, asked.user)
        tokens = estimate_embedded(texts)
        async with self.admission.call(identity, user, tokens) as admitted:
            embedded = await call_service(self.memory.Embed, memory_pb2.EmbedRequest(texts=texts), "memory",
                                          identity, outgoing_timeout(60.0))
            answer = embeddings_response(asked, embedded, tokens)
            await self.commit.write([self.usage.record_write(identity, user, "", embedded.model,
                                                             TokenUsage(tokens, 0, 0))])
            await admitted.settle(tokens, 0)
        return JSONResponse(answer, headers=_headers(admitted, ""))

    async def chat_completions(self, request: Request, identity: Identity) -> Response:
        asked = ChatCompletionRequest.parse(await request.body())
        if session_id := completions.continued_session(asked, request.headers):
            return await self._continued(identity, session_id, asked)
        turn = completions.turn_input(identity, asked, request.headers)
        scope = check.scope(identity, turn.user)
        if asked.stream:
            return await self._streamed(identity, scope, turn, asked.include_usage)
        async with self.admission.chat_turn(identity, turn) as admitted:
            result = await self.conversation.chat(identity, scope, turn)
            await admitted.settle_turn(result)
        headers = _headers(admitted, result.session_id)
        if "cache" in result.route:
            headers["x-moteur-cache"] = result.route["cache"]
        return JSONResponse(completions.completion(result), headers=headers)

    async def _continued(self, identity: Identity, session_id: str, asked: ChatCompletionRequest) -> Response:
        """A session's turn waiting for the caller's tools, continued with their results (SubmitToolResults). Its
        answer comes whole, as one chunk when a stream was asked for."""
        scope = check.scope(identity, identity.user)
        continued = await self.conversation.continuation(identity, scope, session_id, completions.tool_results(asked))
        async with self.admission.chat_turn(identity, continued.turn) as admitted:
            result = await self.conversation.resume(identity, scope, continued)
            await admitted.settle_turn(result)
        headers = _headers(admitted, result.session_id)
        if not asked.stream:
            return JSONResponse(completions.completion(result), headers=headers)
        created = int(time.time())
        whole = {"role": "assistant", "content": result.answer.content, **completions.final_delta(result)}
        events = [completions.chunk(result.answer.id, created, result.answer.model, whole,
                                    completions.finish_reason(result))]
        if asked.include_usage:
            events.append(completions.chunk(result.answer.id, created, result.answer.model, {},
                                            used=completions.usage(result)))
        body = "".join(_event(e) for e in events) + "data: [DONE]\n\n"
        return Response(body, media_type="text/event-stream", headers=headers)

    async def _streamed(self, identity: Identity, scope: Scope, turn: TurnInput, include_usage: bool) -> Response:
        """Server-sent chunks. What can refuse the turn (admission, the session, its tools) is passed before the
        response starts, so that a refusal still gets its HTTP status; a failure after it is an error event."""
        held = contextlib.AsyncExitStack()
        try:
            admitted = await held.enter_async_context(self.admission.chat_turn(identity, turn))
            events = self.conversation.chat_stream(identity, scope, turn)
            held.push_async_callback(events.aclose)
            started = await anext(events)
        except BaseException:
            await held.aclose()
            raise
        assert isinstance(started, TurnStarted), "a turn starts with TurnStarted"
        stream_id, created, model = new_id(), int(time.time()), turn.model_hint

        async def chunks() -> AsyncIterator[str]:
            async with held:
                yield _event(completions.chunk(stream_id, created, model, {"role": "assistant", "content": ""}))
                try:
                    async for event in events:
                        if isinstance(event, TurnResult):
                            await admitted.settle_turn(event)
                            answered_by = event.answer.model
                            last = completions.final_delta(event)
                            yield _event(completions.chunk(stream_id, created, answered_by, last,
                                                           completions.finish_reason(event))
                                         | {"moteur": completions.moteur_part(event)})
                            if include_usage:
                                yield _event(completions.chunk(stream_id, created, answered_by, {},
                                                               used=completions.usage(event)))
                        elif (delta := completions.delta_of(event)) is not None:
                            yield _event(completions.chunk(stream_id, created, model, delta))
                except Exception as exc:  # the status is sent already: the error is the stream's last event
                    error = translate_exception(exc)
                    if error is None:
                        log.exception("http.stream_failed")
                    yield _event(error_body(error))
                yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream",
                                 headers={**_headers(admitted, started.session_id), "cache-control": "no-cache"})

    def _authenticated(self, route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the caller's API key, with the route's metrics, span and log line; every failure
        answers in OpenAI's error JSON."""

        async def endpoint(request: Request) -> Response:
            request_id = request.headers.get("x-request-id", "")[:64] or new_id()
            with _observed(route, request.method, request_id) as outcome:
                try:
                    if self.draining:
                        raise Unavailable("this gateway replica is shutting down: retry, another one answers",
                                          retry_after_seconds=1)
                    identity = await self.auth.authenticate_key(
                        api_key(request.headers.get("authorization", ""), request.headers.get("x-api-key", "")))
                    response = await handler(request, identity)
                except Exception as exc:
                    response = _failure(route, exc)
                outcome.append(response.status_code)
                response.headers["x-request-id"] = request_id
                return response

        return endpoint


def _headers(admitted: AdmittedTurn, session_id: str) -> dict[str, str]:
    """The caller's remaining budget (x-ratelimit-*), the queue wait, and the session the turn went to."""
    headers = dict(admitted.metadata())
    if session_id:
        headers["x-moteur-session"] = session_id
    return headers


def _event(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n"


def _failure(route: str, exc: Exception) -> Response:
    error = translate_exception(exc)
    if error is None:
        log.exception("http.failed", route=route)
        return http_error(500, "internal error: the gateway logged it; retry, and report it if it persists",
                          "server_error")
    return error_response(error)


@contextlib.contextmanager
def _observed(route: str, method: str, request_id: str) -> Iterator[list[int]]:
    """The request's id in its logs and mesh calls, its span, and once answered its metrics and log line (a
    stream is answered when it starts)."""
    started = time.perf_counter()
    outcome: list[int] = []
    request_id_var.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id, route=route)
    with _tracer.start_as_current_span(f"HTTP {method} {route}", attributes={"http.route": route}) as span:
        try:
            yield outcome
        finally:
            status = outcome[0] if outcome else 500
            span.set_attribute("http.status_code", status)
            seconds = time.perf_counter() - started
            HTTP_REQUESTS.labels(route, str(status)).inc()
            HTTP_LATENCY.labels(route).observe(seconds)
            log.info("http.request", route=route, method=method, status=status, ms=round(seconds * 1000, 2))


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) in OpenAI's JSON too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return http_error(404, f"no such endpoint: {request.method} {request.url.path} (served: GET /v1/models)",
                          "not_found_error")
    return http_error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}")
