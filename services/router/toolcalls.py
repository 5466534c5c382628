"""Tool calls a model writes as text: read into the router's tool calls, for deployments that opt in.

Local Qwen2.5 models served by llama-cpp-python's OpenAI-compatible server answer ``tool_choice`` auto with
no OpenAI ``tool_calls``: they write the call in the text, in Qwen's form
``<tool_call>{"name": "calculator", "arguments": {"expression": "17*23"}}</tool_call>`` — several of them,
with text around, the JSON inside a ```json fence, or a fence or bare JSON without the tags; ``arguments``
may be an object or a JSON string of one. A deployment with ``tool_call_text: qwen`` in the registry gets
its provider wrapped in :class:`TextToolCalls`, which promises:

- **all or nothing**: an answer becomes tool calls only when every call written in it names a tool offered
  (the one ``tool_choice`` names, when it names one) and has arguments valid against that tool's JSON
  Schema; otherwise the answer stays exactly as the model wrote it, and the refusal is counted;
- **content as OpenAI and vLLM's Hermes parser carry it**: the assistant message keeps the text written
  before the first call (what the model said before calling); text between and after the calls is dropped;
- **fresh ids**: each call read gets a new unique id;
- **streams**: text is passed on as it comes until something that starts like a call (``<tool_call>``, a
  fence opening on JSON, an answer opening on JSON); from there it is held until it is known to be a call
  (the stream then ends as a tool-call completion, its markup never shown) or not (it is passed on).

Only answers to requests that offered tools are read, and only when the provider sent no tool calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import jsonschema
import structlog

from moteur.router.metrics import TEXT_TOOL_CALLS, TEXT_TOOL_CALLS_REFUSED
from moteur.router.providers import Completion, Generation, ModelTool, Provider, ToolCall, Turn
from moteur.router.registry import ModelDeployment
from moteur.runtime import jsontext

log = structlog.get_logger("moteur.router")

# Qwen's tags; a last call the model did not close (it stopped, or ran out of tokens) still counts.
_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
# A fence whose body opens on JSON: ```json {…}``` or ``` [{…}] ```.
_FENCED = re.compile(r"```[ \t]*(?:json)?\s*([\[{].*?)```", re.DOTALL | re.IGNORECASE)
_FENCE_AROUND = re.compile(r"\A```[ \t]*(?:json)?\s*(.*?)\s*```\Z", re.DOTALL | re.IGNORECASE)

# What a stream holds back: where a call may begin…
_START = re.compile(r"<tool_call>|```[ \t]*(?:json)?\s*[\[{]", re.IGNORECASE)
_OPENS_ON_JSON = re.compile(r"\s*(?:\{|\[\s*\{)")
# …and a tail that may still become such a start.
_TAG_OPEN = "<tool_call>"
_FENCE_OPENING = re.compile(r"(?:`{1,2}|```[ \t]*(?:j|js|jso|json)?\s*)\Z", re.IGNORECASE)
_MAY_OPEN_ON_JSON = re.compile(r"\s*(?:\[\s*)?\Z")


@dataclass(frozen=True, slots=True)
class Reading:
    """What an answer's text says: the calls written in it (none when it is plain text or was refused),
    the text before the first of them, and, when some text looked like calls but was refused, why."""

    calls: tuple[ToolCall, ...] = ()
    content: str = ""
    refused: str = ""


class _Refused(ValueError):
    pass


def read(text: str, tools: Sequence[ModelTool], tool_choice: str = "") -> Reading:
    """The tool calls written in ``text``, checked against the tools offered (see the module's promises)."""
    offered = {t.name: t for t in tools if tool_choice in ("", "auto", "required") or t.name == tool_choice}
    blocks = [(m.start(), m.group(1)) for m in _TAGGED.finditer(text)]
    if not blocks:  # without tags, only JSON shaped like a call is one: other JSON in an answer is content
        blocks = [(m.start(), m.group(1)) for m in _FENCED.finditer(text) if _shaped_like_calls(m.group(1))]
    if not blocks and _shaped_like_calls(text):
        blocks = [(0, text)]
    if not blocks:
        return Reading()
    calls: list[ToolCall] = []
    try:
        for _, body in blocks:
            calls += _calls_in(body, offered)
    except _Refused as refused:
        return Reading(refused=str(refused))
    return Reading(tuple(calls), text[:blocks[0][0]].rstrip())


def _calls_in(body: str, offered: dict[str, ModelTool]) -> list[ToolCall]:
    try:
        written = jsontext.loads(_unfenced(body))
    except ValueError:
        raise _Refused("a call is not JSON") from None
    written = written if isinstance(written, list) else [written]
    if not written:
        raise _Refused("an empty list of calls")
    return [_checked(call, offered) for call in written]


def _checked(call: object, offered: dict[str, ModelTool]) -> ToolCall:
    if not _is_call(call) or not isinstance(call["name"], str):
        raise _Refused('a call is not {"name": …, "arguments": …}')
    tool = offered.get(call["name"])
    if tool is None:
        raise _Refused(f"tool {call['name'][:64]!r} was not offered")
    arguments = call["arguments"]
    if isinstance(arguments, str):
        try:
            arguments = jsontext.loads(arguments)
        except ValueError:
            raise _Refused(f"the arguments of {tool.name!r} are not JSON") from None
    if not isinstance(arguments, dict):
        raise _Refused(f"the arguments of {tool.name!r} are not a JSON object")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters).iter_errors(arguments))
    if error is not None:
        raise _Refused(f"the arguments of {tool.name!r} do not match its schema: {error.message[:200]}")
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", tool.name, json.dumps(arguments))


def _unfenced(body: str) -> str:
    body = body.strip()
    fenced = _FENCE_AROUND.match(body)
    return fenced.group(1) if fenced else body


def _shaped_like_calls(body: str) -> bool:
    """JSON of {"name": …, "arguments": …} objects: a call the model meant, valid or not."""
    try:
        written = jsontext.loads(_unfenced(body))
    except ValueError:
        return False
    written = written if isinstance(written, list) else [written]
    return bool(written) and all(_is_call(c) for c in written)


def _is_call(written: object) -> TypeGuard[dict[str, Any]]:
    # Those two keys and no other: after a result, a small model may echo its call with the result added
    # ({"name": …, "arguments": …, "result": 391}), which is an answer, not one more call.
    return isinstance(written, dict) and written.keys() == {"name", "arguments"}


class Holdback:
    """A stream's text, passed on as it comes except from where a written tool call may begin: from there
    it is held while it may be one. ``feed`` returns what may be passed on now; ``rest`` the text held."""

    def __init__(self) -> None:
        self.text = ""
        self.released = 0  # text[:released] has been passed on
        self._scan = 0  # where the next call may begin
        self._fence: int | None = None  # the body of a fence opening on JSON, held until it closes
        self._call = False  # the held text began like a call: held to the end

    def feed(self, delta: str) -> str:
        passed = self.released
        self.text += delta
        self._advance()
        return self.text[passed:self.released]

    def rest(self) -> str:
        held, self.released = self.text[self.released:], len(self.text)
        return held

    def _advance(self) -> None:
        text = self.text
        while not self._call:
            if self._fence is not None:
                close = text.find("```", self._fence)
                if close < 0:
                    return
                if _shaped_like_calls(text[self._fence:close]):
                    self._call = True
                    return
                self._scan, self._fence = close + 3, None  # a fence of other JSON: content, passed on
                continue
            if self._scan == 0:  # an answer that opens on JSON may be nothing but a call
                if _OPENS_ON_JSON.match(text):
                    self._call = True
                    return
                if _MAY_OPEN_ON_JSON.match(text):
                    return
            found = _START.search(text, self._scan)
            if found is None:
                self.released = self._scan = _opening(text, self._scan)
                return
            self.released = self._scan = found.start()
            if found.group().startswith("<"):
                self._call = True
            else:
                self._fence = found.end() - 1


def _opening(text: str, start: int) -> int:
    """Where the tail of ``text`` (from ``start`` on) may still become the start of a call; its end if
    nowhere."""
    at = len(text)
    fence = text.rfind("`", start)
    while fence > start and text[fence - 1] == "`":  # the run of backticks the last one ends
        fence -= 1
    if fence >= 0 and _FENCE_OPENING.match(text, fence):
        at = fence
    for tag in range(max(start, len(text) - len(_TAG_OPEN) + 1), at):
        if _TAG_OPEN.startswith(text[tag:]):
            return tag
    return at


class TextToolCalls:
    """A deployment's provider, with the tool calls its model writes as text read into tool calls."""

    def __init__(self, provider: Provider, deployment: ModelDeployment) -> None:
        self.provider = provider
        self.deployment = deployment

    async def complete(self, turns: Sequence[Turn], generation: Generation) -> Completion:
        return self._read(await self.provider.complete(turns, generation), generation)

    async def stream(self, turns: Sequence[Turn], generation: Generation) -> AsyncGenerator[str | Completion, None]:
        async with contextlib.aclosing(self.provider.stream(turns, generation)) as items:
            if not generation.tools:
                async for item in items:
                    yield item
                return
            held = Holdback()
            async for item in items:
                if isinstance(item, str):
                    if passed := held.feed(item):
                        yield passed
                    continue
                completion = self._read(item, generation)
                if completion is item:
                    rest = held.rest()
                else:  # the caller has seen the text up to where the calls began: the content, or part of it
                    rest = completion.text[held.released:]
                if rest:
                    yield rest
                yield completion

    def _read(self, completion: Completion, generation: Generation) -> Completion:
        if completion.tool_calls or not generation.tools:
            return completion
        reading = read(completion.text, generation.tools, generation.tool_choice)
        model = self.deployment.name
        if reading.refused:
            TEXT_TOOL_CALLS_REFUSED.labels(model).inc()
            log.info("model.tool_call_text_refused", model=model, reason=reading.refused)
            return completion
        if not reading.calls:
            return completion
        TEXT_TOOL_CALLS.labels(model).inc(len(reading.calls))
        return dataclasses.replace(completion, text=reading.content, finish_reason="tool_calls",
                                   tool_calls=reading.calls)


def reading_text_calls(provider: Provider, deployment: ModelDeployment) -> Provider:
    """``provider``, wrapped when the deployment's model writes its tool calls as text."""
    return TextToolCalls(provider, deployment) if deployment.tool_call_text else provider

