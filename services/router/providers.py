"""Providers: how one model deployment is called. OpenAI-compatible servers go through LangChain.

A provider speaks the router's small vocabulary (:class:`Turn` in, :class:`Completion` out) and turns
the SDK's failures into moteur errors that name the deployment, so that the caller reads
"model server for 'smollm2' at http://… is unreachable" and not a stack trace.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import openai
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from moteur.router.registry import ModelDeployment
from moteur.runtime.errors import DeadlineExceeded, InvalidArgument, MoteurError, ResourceExhausted, Unavailable

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    # None when the provider reported no usage; the router then counts with its estimate.
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """What the caller asks of one model call."""

    max_tokens: int
    temperature: float | None = None
    stop: Sequence[str] = ()


class Provider(Protocol):
    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion: ...

    def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncIterator[str | Completion]:
        """Text deltas, then exactly one Completion with the whole text."""
        ...


class InstantProvider:
    """Answers at once without a model: measures the mesh itself in benchmarks, never used for users."""

    def __init__(self, deployment: ModelDeployment) -> None:
        self.deployment = deployment

    def _answer(self, turns: Sequence[Turn]) -> str:
        return f"instant answer to: {turns[-1].content[:200]}"

    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        if self.deployment.simulated_latency_ms:
            await asyncio.sleep(self.deployment.simulated_latency_ms / 1000)
        return Completion(self._answer(turns), "stop")

    async def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncIterator[str | Completion]:
        if self.deployment.simulated_latency_ms:
            await asyncio.sleep(self.deployment.simulated_latency_ms / 1000)
        text = self._answer(turns)
        for word in text.split(" "):
            yield word + " "
        yield Completion(text, "stop")


class OpenAICompatibleProvider:
    """OpenAI's chat completions API, and servers that speak it (vLLM, llama.cpp, Ollama), via LangChain."""

    def __init__(self, deployment: ModelDeployment) -> None:
        self.deployment = deployment
        api_key = os.environ.get(deployment.api_key_env, "") if deployment.api_key_env else ""
        self._chat = ChatOpenAI(
            model=deployment.model,
            base_url=deployment.base_url,
            api_key=api_key or "not-needed",  # local servers accept any key; the SDK insists on one
            timeout=deployment.timeout_seconds,
            max_retries=0,  # the router decides about retries, with the caller's deadline in mind
            stream_usage=True,
        )

    def _bind(self, generation: Generation) -> ChatOpenAI:
        # langchain-openai sends max_completion_tokens, which llama.cpp's server ignores: send max_tokens too.
        return self._chat.model_copy(
            update={
                "extra_body": {"max_tokens": generation.max_tokens},
                "temperature": generation.temperature,
                "stop": list(generation.stop or self.deployment.stop) or None,
            }
        )

    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        try:
            message = await self._bind(generation).ainvoke(_to_langchain(turns))
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        usage = message.usage_metadata or {}
        return Completion(
            text=_text_of(message),
            finish_reason=_finish_reason(message.response_metadata.get("finish_reason")),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
        )

    async def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncIterator[str | Completion]:
        parts: list[str] = []
        finish: str | None = None
        input_tokens = output_tokens = None
        try:
            async for chunk in self._bind(generation).astream(_to_langchain(turns)):
                text = _text_of(chunk)
                if text:
                    parts.append(text)
                    yield text
                finish = chunk.response_metadata.get("finish_reason") or finish
                if chunk.usage_metadata:
                    input_tokens = chunk.usage_metadata.get("input_tokens")
                    output_tokens = chunk.usage_metadata.get("output_tokens")
        except openai.OpenAIError as exc:
            raise self._translate(exc) from exc
        yield Completion("".join(parts), _finish_reason(finish), input_tokens, output_tokens)

    def _translate(self, exc: openai.OpenAIError) -> MoteurError:
        where = f"model server for {self.deployment.name!r} at {self.deployment.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return DeadlineExceeded(f"{where} did not answer within {self.deployment.timeout_seconds:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return Unavailable(f"{where} is unreachable; retry later or choose another model")
        if isinstance(exc, openai.RateLimitError):
            return ResourceExhausted(f"{where} is rate limiting; retry later")
        if isinstance(exc, openai.BadRequestError):
            return InvalidArgument("messages", f"{where} refused the request: {exc.message}")
        if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            return Unavailable(f"{where} failed with HTTP {exc.status_code}; retry later")
        return MoteurError(f"{where} failed: {exc}")


def provider_for(deployment: ModelDeployment) -> Provider:
    if deployment.provider == "instant":
        return InstantProvider(deployment)
    return OpenAICompatibleProvider(deployment)


_LANGCHAIN_TYPES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage, "user": HumanMessage, "assistant": AIMessage,
}


def _to_langchain(turns: Sequence[Turn]) -> list[BaseMessage]:
    return [_LANGCHAIN_TYPES[turn.role](content=turn.content) for turn in turns]


def _text_of(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


def _finish_reason(value: object) -> FinishReason:
    if value in ("stop", "length", "tool_calls", "content_filter"):
        return value  # type: ignore[return-value]
    return "stop"
