"""Providers: how one model deployment is called. Real providers go through LangChain chat models.

A provider speaks the router's small vocabulary (:class:`Turn` in, :class:`Completion` out) and turns
every failure into a :class:`ModelCallError` that names the deployment and says what the router may do
about it (retry, fall back, count against the breaker), so that the caller reads "model server for
'smollm2' at http://… is unreachable" and not a stack trace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import anthropic
import grpc
import openai
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI

from moteur.router.registry import ModelDeployment
from moteur.runtime import jsontext
from moteur.runtime.errors import MoteurError

# A chat model with one call's settings (and tools) bound.
Bound = Runnable[LanguageModelInput, BaseMessage]
Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
Outcome = Literal[
    "unreachable", "server_error", "timeout", "rate_limited", "context_length", "malformed", "empty", "refused",
    "busy",
]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool. ``arguments_json`` is passed on as the model wrote it: arguments
    that are not JSON reach the tool's validation, whose error the model sees and can correct."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ModelTool:
    """A tool offered to the model: OpenAI's function format."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai_format(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that asked for tools
    tool_call_id: str = ""  # tool turns: the call they answer


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    # None when the provider reported no usage; the router then counts with its estimate.
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """What the caller asks of one model call."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    json_output: bool = False
    json_schema: dict[str, Any] | None = None
    tools: tuple[ModelTool, ...] = ()
    # "" or "auto": the model decides; "required": some tool; a tool's name: that tool. ("none" offers no
    # tools at all: the router sends none.)
    tool_choice: str = ""

    def tools_key(self) -> str:
        return json.dumps([t.openai_format() for t in self.tools], sort_keys=True) + "|" + self.tool_choice


class ModelCallError(MoteurError):
    """One failed call to one deployment, and what the router may do about it."""

    def __init__(
        self, code: grpc.StatusCode, outcome: Outcome, message: str, *, retryable: bool = False,
        fallback: bool = True, trips_breaker: bool = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome
        self.retryable = retryable  # the same deployment may succeed if asked again shortly
        self.fallback = fallback  # another candidate may succeed
        self.trips_breaker = trips_breaker  # says something about the deployment's health


class Provider(Protocol):
    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion: ...

    def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncGenerator[str | Completion, None]:
        """Text deltas, then exactly one Completion with the whole text."""
        ...


class InstantProvider:
    """Answers at once without a model: measures the mesh itself in benchmarks, never used for users.

    It plays scripted tool calls: offered tools, it calls those named on ``/tool <name> <arguments JSON>``
    lines of the last user message, once; after the results it answers with them.
    """

    def __init__(self, deployment: ModelDeployment) -> None:
        self.deployment = deployment

    def _answer(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        last = turns[-1]
        if last.role == "tool":
            results = [t.content[:200] for t in reversed(turns) if t.role == "tool"]
            return Completion(f"instant answer after tools: {' '.join(reversed(results))}", "stop")
        offered = {t.name for t in generation.tools}
        calls = tuple(
            ToolCall(f"call_{index}", name, arguments or "{}")
            for index, (name, arguments) in enumerate(_SCRIPTED_CALL.findall(last.content)) if name in offered
        )
        if calls:
            return Completion("", "tool_calls", tool_calls=calls)
        if generation.json_output:
            return Completion(json.dumps({"answer": last.content[:200]}), "stop")
        return Completion(f"instant answer to: {last.content[:200]}", "stop")

    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        if self.deployment.simulated_latency_ms:
            await asyncio.sleep(self.deployment.simulated_latency_ms / 1000)
        return self._answer(turns, generation)

    async def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncGenerator[str | Completion, None]:
        if self.deployment.simulated_latency_ms:
            await asyncio.sleep(self.deployment.simulated_latency_ms / 1000)
        completion = self._answer(turns, generation)
        for index, word in enumerate(completion.text.split(" ") if completion.text else ()):
            if index and self.deployment.simulated_word_ms:
                await asyncio.sleep(self.deployment.simulated_word_ms / 1000)
            yield f" {word}" if index else word  # the deltas add up to the answer's text exactly
        yield completion


class LangChainProvider:
    """A LangChain chat model; subclasses build it and bind one call's generation settings."""

    sdk: ModuleType  # the provider SDK whose exception classes the chat model raises

    def __init__(self, deployment: ModelDeployment) -> None:
        self.deployment = deployment
        self._where = f"model server for {deployment.name!r}" + (f" at {deployment.base_url}" if deployment.base_url
                                                                 else "")

    def _bind(self, generation: Generation) -> Bound:
        raise NotImplementedError

    def _messages(self, turns: Sequence[Turn]) -> list[BaseMessage]:
        return _to_langchain(turns)

    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        try:
            message = await self._bind(generation).ainvoke(self._messages(turns))
        except Exception as exc:
            raise self._translate(exc) from exc
        return self._checked(_completion_of(message, _finish_of(message)), generation)

    async def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncGenerator[str | Completion, None]:
        # Chunks add up (LangChain merges text, tool-call fragments and usage); the sum is the answer.
        gathered: BaseMessage | None = None
        finish: object = None
        try:
            async for chunk in self._bind(generation).astream(self._messages(turns)):
                text = _text_of(chunk)
                if text:
                    yield text
                finish = _finish_of(chunk) or finish
                # The chunks are AIMessageChunks, whose + merges them (a plain BaseMessage's + makes a prompt).
                gathered = chunk if gathered is None else gathered + chunk  # type: ignore[assignment]  # chunk + chunk is a chunk; langchain types it as a message
        except Exception as exc:
            raise self._translate(exc) from exc
        yield self._checked(_completion_of(gathered or AIMessageChunk(content=""), finish), generation)

    def _checked(self, completion: Completion, generation: Generation) -> Completion:
        if not completion.text.strip() and not completion.tool_calls:
            raise ModelCallError(grpc.StatusCode.UNAVAILABLE, "empty", f"{self._where} answered an empty completion")
        if generation.json_output:
            try:
                json.loads(completion.text)
            except ValueError:
                raise ModelCallError(
                    grpc.StatusCode.UNAVAILABLE, "malformed",
                    f"{self._where} was asked for JSON and answered text that does not parse as JSON",
                    trips_breaker=False,
                ) from None
        return completion

    def _translate(self, exc: Exception) -> ModelCallError:
        sdk, where = self.sdk, self._where
        unavailable = grpc.StatusCode.UNAVAILABLE
        if isinstance(exc, ModelCallError):
            return exc
        if isinstance(exc, sdk.APITimeoutError | asyncio.TimeoutError):
            return ModelCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "timeout",
                                  f"{where} did not answer within {self.deployment.timeout_seconds:g} s")
        if isinstance(exc, sdk.APIConnectionError):
            return ModelCallError(unavailable, "unreachable", f"{where} is unreachable", retryable=True)
        if isinstance(exc, sdk.RateLimitError):
            return ModelCallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited", f"{where} is rate limiting")
        if isinstance(exc, sdk.BadRequestError) and _CONTEXT_LENGTH.search(str(exc)):
            return ModelCallError(grpc.StatusCode.INVALID_ARGUMENT, "context_length",
                                  f"{where} says the prompt exceeds its context window", trips_breaker=False)
        if isinstance(exc, sdk.APIStatusError) and exc.status_code >= 500:
            return ModelCallError(unavailable, "server_error", f"{where} failed with HTTP {exc.status_code}",
                                  retryable=True)
        if isinstance(exc, sdk.APIStatusError) and exc.status_code in (401, 403):
            return ModelCallError(unavailable, "refused", f"{where} refused the router's credentials "
                                  f"(HTTP {exc.status_code}); check the deployment's api_key_env")
        if isinstance(exc, sdk.APIStatusError):
            return ModelCallError(grpc.StatusCode.INVALID_ARGUMENT, "refused",
                                  f"{where} refused the request (HTTP {exc.status_code}): {_short(exc)}",
                                  fallback=False, trips_breaker=False)
        # Anything else came from a body the SDK or LangChain could not read: a broken or impostor server.
        return ModelCallError(unavailable, "malformed",
                              f"{where} answered something that is not a chat completion ({type(exc).__name__})")


class OpenAICompatibleProvider(LangChainProvider):
    """OpenAI's chat completions API, and servers that speak it (vLLM, llama.cpp, Ollama)."""

    sdk = openai

    def __init__(self, deployment: ModelDeployment) -> None:
        super().__init__(deployment)
        self._bound: dict[tuple[object, ...], Bound] = {}
        self._chat = ChatOpenAI(
            model=deployment.model,
            base_url=deployment.base_url,
            api_key=_api_key(deployment) or "not-needed",  # local servers accept any key; the SDK insists on one
            timeout=deployment.timeout_seconds,
            max_retries=0,  # the router decides about retries, with the caller's deadline in mind
            stream_usage=True,
        )

    def _bind(self, generation: Generation) -> Bound:
        # Copying the chat model costs more than the rest of the router's work: keep the few in use.
        key = (generation.max_tokens, generation.temperature, generation.top_p, tuple(generation.stop),
               generation.json_output,
               json.dumps(generation.json_schema, sort_keys=True), generation.tools_key())
        bound = self._bound.get(key)
        if bound is None:
            if len(self._bound) >= 64:
                self._bound.clear()
            bound = self._bound[key] = _with_tools(self._copy(generation), generation, required="required")
        return bound

    def _messages(self, turns: Sequence[Turn]) -> list[BaseMessage]:
        messages = _to_langchain(turns)
        if self.deployment.json_schema_style == "llamacpp":
            # LangChain sends null content with tool calls; llama-cpp-python's server insists on a string.
            for message in messages:
                if isinstance(message, AIMessage) and message.tool_calls and not message.content:
                    message.content = " "
        return messages

    def _copy(self, generation: Generation) -> BaseChatModel:
        # langchain-openai sends max_completion_tokens, which llama.cpp's server ignores: send max_tokens too.
        extra: dict[str, Any] = {"max_tokens": generation.max_tokens}
        if generation.json_schema is not None and self.deployment.json_schema_style == "llamacpp":
            extra["response_format"] = {"type": "json_object", "schema": generation.json_schema}
        elif generation.json_schema is not None:
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "answer", "schema": generation.json_schema}}
        elif generation.json_output:
            extra["response_format"] = {"type": "json_object"}
        return self._chat.model_copy(update={
            "extra_body": extra,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "stop": list(generation.stop or self.deployment.stop) or None,
        })


class AnthropicProvider(LangChainProvider):
    """Anthropic's Messages API."""

    sdk = anthropic

    def __init__(self, deployment: ModelDeployment) -> None:
        super().__init__(deployment)
        options: dict[str, Any] = {"base_url": deployment.base_url} if deployment.base_url else {}
        self._chat = ChatAnthropic(
            model=deployment.model, api_key=_api_key(deployment) or "not-set",
            timeout=deployment.timeout_seconds, max_retries=0, **options,
        )

    def _bind(self, generation: Generation) -> Bound:
        chat = self._chat.model_copy(update={
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "stop_sequences": list(generation.stop or self.deployment.stop) or None,
        })
        return _with_tools(chat, generation, required="any")  # Anthropic's word for "some tool"


def provider_for(deployment: ModelDeployment) -> Provider:
    if deployment.provider == "instant":
        return InstantProvider(deployment)
    if deployment.provider == "anthropic":
        return AnthropicProvider(deployment)
    return OpenAICompatibleProvider(deployment)


_SCRIPTED_CALL = re.compile(r"^/tool ([a-zA-Z0-9_-]{1,64})[ \t]*(.*)$", re.MULTILINE)
_CONTEXT_LENGTH = re.compile(r"context|too long|maximum.*tokens|exceed", re.IGNORECASE)

_LANGCHAIN_TYPES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage, "user": HumanMessage, "assistant": AIMessage,
}


def _api_key(deployment: ModelDeployment) -> str:
    return os.environ.get(deployment.api_key_env, "") if deployment.api_key_env else ""


def _short(exc: Exception) -> str:
    return str(getattr(exc, "message", exc))[:300]


def _with_tools(chat: BaseChatModel, generation: Generation, required: str) -> Bound:
    if not generation.tools or generation.tool_choice == "none":
        return chat
    choice = {"": "auto", "required": required}.get(generation.tool_choice, generation.tool_choice)
    return chat.bind_tools([t.openai_format() for t in generation.tools], tool_choice=choice)


def _to_langchain(turns: Sequence[Turn]) -> list[BaseMessage]:
    return [_message_of(turn) for turn in turns]


def _message_of(turn: Turn) -> BaseMessage:
    if turn.role == "tool":
        return ToolMessage(content=turn.content, tool_call_id=turn.tool_call_id)
    if turn.role == "assistant" and turn.tool_calls:
        valid, invalid = [], []
        for call in turn.tool_calls:
            try:
                args = jsontext.loads(call.arguments_json or "{}")
            except ValueError:
                args = None
            if isinstance(args, dict):
                valid.append({"name": call.name, "args": args, "id": call.id, "type": "tool_call"})
            else:  # replayed as the model wrote it
                invalid.append({"name": call.name, "args": call.arguments_json, "id": call.id, "error": None,
                                "type": "invalid_tool_call"})
        return AIMessage(content=turn.content, tool_calls=valid, invalid_tool_calls=invalid)
    return _LANGCHAIN_TYPES[turn.role](content=turn.content)


def _completion_of(message: BaseMessage, finish: object) -> Completion:
    """A model's answer (or the sum of a stream's chunks) in the router's terms."""
    usage = getattr(message, "usage_metadata", None) or {}
    calls = _tool_calls_of(message)
    return Completion(
        text=_text_of(message),
        finish_reason="tool_calls" if calls else _finish_reason(finish),
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        tool_calls=calls,
    )


def _tool_calls_of(message: BaseMessage) -> tuple[ToolCall, ...]:
    ids = (f"call_{n}" for n in itertools.count())  # for providers that give none
    calls = [ToolCall(c.get("id") or next(ids), c["name"], json.dumps(c.get("args") or {}))
             for c in getattr(message, "tool_calls", None) or []]
    # Arguments that did not parse go on as written: the tool's validation tells the model what is wrong.
    calls += [ToolCall(c.get("id") or next(ids), c.get("name") or "", str(c.get("args") or ""))
              for c in getattr(message, "invalid_tool_calls", None) or []]
    # LangChain lists valid calls before invalid ones; a stream's chunks still say the model's order.
    order = {c.get("id"): c.get("index") or 0 for c in getattr(message, "tool_call_chunks", None) or []}
    return tuple(sorted(calls, key=lambda call: order.get(call.id, len(order))))


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


def _finish_of(message: BaseMessage) -> object:
    metadata = message.response_metadata
    return metadata.get("finish_reason") or metadata.get("stop_reason")


_STOP_REASONS: dict[str, FinishReason] = {  # Anthropic's
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
}


def _finish_reason(value: object) -> FinishReason:
    if value in ("stop", "length", "tool_calls", "content_filter"):
        return value
    return _STOP_REASONS.get(str(value), "stop")
