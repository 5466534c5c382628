"""``/v1/chat/completions``: OpenAI's request into the gateway's :class:`TurnInput`, and the turn's result back
into OpenAI's response or stream chunks. Only translation: the turn is the gRPC API's turn.

Sessions: with an ``X-Moteur-Session`` header (a session's id, or ``new`` to start one) the session holds the
history, and only the request's last message (the new question) is read; the response's ``X-Moteur-Session``
names the session. Without it the request is stateless, as in OpenAI's API: its messages are the history, and
nothing but the usage is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from moteur.gateway import validation as check
from moteur.gateway.http.bodies import Body
from moteur.gateway.sessions import Role, StoredMessage, new_message
from moteur.gateway.tooling import client_tools, tool_choice
from moteur.gateway.turns import REQUIRES_ACTION, TextDelta, TurnEvent, TurnInput, TurnResult
from moteur.runtime import sampling
from moteur.runtime.errors import InvalidArgument
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, gateway_pb2

PRIORITIES = {"critical": common_pb2.PRIORITY_CRITICAL, "high": common_pb2.PRIORITY_HIGH,
              "normal": common_pb2.PRIORITY_NORMAL, "low": common_pb2.PRIORITY_LOW, "batch": common_pb2.PRIORITY_BATCH}
_FINISH: dict[int, str] = {common_pb2.FINISH_REASON_STOP: "stop", common_pb2.FINISH_REASON_LENGTH: "length",
           common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls", common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter"}
NEW_SESSION = "new"  # X-Moteur-Session: new starts a session; the response's X-Moteur-Session names it
# Names a caller may give as "model" for "let moteur's routes choose".
ROUTED = frozenset({"", "auto", "moteur", "default"})




class _Function(Body):
    name: str
    arguments: str = "{}"


class _ToolCall(Body):
    id: str
    type: Literal["function"] = "function"
    function: _Function


class _Part(Body):
    type: str
    text: str = ""


class _Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCall] = Field(default_factory=list)
    tool_call_id: str = ""

    def text(self, where: str) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for n, part in enumerate(self.content):
            if part.type != "text":
                raise InvalidArgument(f"{where}.content[{n}].type", f"{part.type!r} parts are not supported; send text")
        return "".join(part.text for part in self.content)


class _ToolFunction(Body):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Tool(Body):
    type: Literal["function"]
    function: _ToolFunction


class _NamedChoice(Body):
    type: Literal["function"]
    function: _Function | dict[str, str]


class _JsonSchema(Body):
    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class _ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _StreamOptions(Body):
    include_usage: bool = False


class ChatCompletionRequest(Body):
    model: str = ""
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[_Tool] = Field(default_factory=list)
    tool_choice: Literal["auto", "none", "required"] | _NamedChoice | None = None
    response_format: _ResponseFormat | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    logprobs: bool = False
    stop: str | list[str] | None = None
    user: str = ""

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def turn_input(identity: Identity, request: ChatCompletionRequest, headers: Mapping[str, str]) -> TurnInput:
    """The turn a request asks for; INVALID_ARGUMENT naming the field (or header) that is wrong."""
    session = headers.get("x-moteur-session", "").strip()
    session_id = "" if session.lower() == NEW_SESSION else check.optional_session_id(session)
    user = check.acting_user(identity, request.user)
    priority = headers.get("x-moteur-priority", "normal").strip().lower()
    if priority not in PRIORITIES:
        raise InvalidArgument("x-moteur-priority", f"{priority[:20]!r} is not one of {', '.join(PRIORITIES)}")
    last = request.messages[-1]
    if session:
        if last.role != "user":
            raise InvalidArgument(f"messages[{len(request.messages) - 1}].role", "with X-Moteur-Session the "
                                  "session holds the history: the last message is the new question (role user)")
        if not session_id and not user:
            raise InvalidArgument("user", "required with a service key to start a session: the user it belongs to")
        message, history = check.message_text(last.text("messages[-1]")), None
    else:
        if not user and not identity.user:
            raise InvalidArgument("user", "required with a service key (one created without --user): the end user "
                                  "the turn is for")
        message, history = _stateless(request.messages)
    if request.n != 1:
        raise InvalidArgument("n", f"moteur answers with one choice (n = 1), got {request.n}: send one request per "
                                   "choice")
    if request.logprobs:
        raise InvalidArgument("logprobs", "not available: the models behind moteur do not all give them")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    schema, json_output = _response_format(request.response_format)
    return TurnInput(
        session_id=session_id, user=user, message=message, priority=PRIORITIES[priority],
        model_hint="" if request.model in ROUTED else check.model_hint(request.model),
        max_output_tokens=check.bounded(max_tokens or 0, "max_completion_tokens", check.MAX_OUTPUT_TOKENS),
        idempotency_key=check.text_at_most(headers.get("idempotency-key", ""), "idempotency-key",
                                           check.MAX_IDEMPOTENCY_KEY_CHARS),
        use_memory=headers.get("x-moteur-memory", "on").strip().lower() != "off",
        use_cache=headers.get("x-moteur-cache", "on").strip().lower() != "off",
        tool_choice=_tool_choice(request.tool_choice),
        client_tools=client_tools([gateway_pb2.ToolSpec(name=t.function.name, description=t.function.description,
                                                        input_schema_json=json.dumps(t.function.parameters))
                                   for t in request.tools]),
        json_schema=schema, json_output=json_output, history=history,
        temperature=sampling.temperature(request.temperature), top_p=sampling.top_p(request.top_p),
        stop=sampling.stop_sequences((request.stop,) if isinstance(request.stop, str) else request.stop or ()),
    )


def continued_session(request: ChatCompletionRequest, headers: Mapping[str, str]) -> str:
    """The session whose waiting turn the request continues with the results of its tools (the messages end
    with tool messages, with X-Moteur-Session), or ''."""
    session = headers.get("x-moteur-session", "").strip()
    if not session or request.messages[-1].role != "tool":
        return ""
    if session.lower() == NEW_SESSION:
        raise InvalidArgument("x-moteur-session", "a new session has no tool calls waiting for results")
    return check.optional_session_id(session)


def tool_results(request: ChatCompletionRequest) -> list[common_pb2.ToolResult]:
    """The tool messages that end the request, as the results SubmitToolResults takes. Content that is not JSON
    is sent as a JSON string: the model reads it as it was written."""
    results = []
    for n in range(len(request.messages) - 1, -1, -1):
        message = request.messages[n]
        if message.role != "tool":
            break
        if not message.tool_call_id:
            raise InvalidArgument(f"messages[{n}].tool_call_id", "required on a tool message: the call it answers")
        text = message.text(f"messages[{n}]")
        try:
            json.loads(text)
            content = text
        except ValueError:
            content = json.dumps(text, ensure_ascii=False)
        results.append(common_pb2.ToolResult(call_id=message.tool_call_id, ok=True, content_json=content))
    return results[::-1]


def _stateless(messages: list[_Message]) -> tuple[str, tuple[StoredMessage, ...]]:
    """The question (the last message when it is the user's; '' when the model goes on from tool results) and
    the history before it."""
    converted: list[StoredMessage] = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        text = message.text(where)
        if len(text) > check.MAX_MESSAGE_CHARS:
            raise InvalidArgument(f"{where}.content", f"at most {check.MAX_MESSAGE_CHARS:,} characters")
        role: Role = "system" if message.role == "developer" else message.role
        if role == "tool":
            if not message.tool_call_id:
                raise InvalidArgument(f"{where}.tool_call_id", "required on a tool message: the call it answers")
            converted.append(new_message("tool", text, tool_result={"call_id": message.tool_call_id}))
        elif message.tool_calls:
            if role != "assistant":
                raise InvalidArgument(f"{where}.tool_calls", "only assistant messages carry tool calls")
            converted.append(new_message("assistant", text, tool_calls=[
                {"id": c.id, "name": c.function.name, "arguments_json": c.function.arguments}
                for c in message.tool_calls]))
        else:
            converted.append(new_message(role, text))
    last = converted[-1]
    if last.role == "user":
        return check.message_text(last.content), tuple(converted[:-1])
    if last.role != "tool":
        raise InvalidArgument(f"messages[{len(messages) - 1}].role", "the last message is the question (user) or "
                              "the results of the tools the model called (tool)")
    return "", tuple(converted)


def _tool_choice(choice: str | _NamedChoice | None) -> str:
    if choice is None:
        return ""
    if isinstance(choice, _NamedChoice):
        function = choice.function
        return tool_choice(function.name if isinstance(function, _Function) else function.get("name", ""))
    return tool_choice(choice)


def _response_format(response_format: _ResponseFormat | None) -> tuple[str, bool]:
    if response_format is None or response_format.type == "text":
        return "", False
    if response_format.type == "json_object":
        return "", True
    if response_format.json_schema is None or not response_format.json_schema.schema_:
        raise InvalidArgument("response_format.json_schema.schema", "required with type json_schema")
    return check.json_schema(json.dumps(response_format.json_schema.schema_), "response_format.json_schema.schema"), \
        True


# -- responses --------------------------------------------------------------------------------------------


def completion(result: TurnResult, created: int | None = None) -> dict[str, Any]:
    """The turn's result as a ``chat.completion`` object."""
    return {
        "id": f"chatcmpl-{result.answer.id}", "object": "chat.completion", "created": created or int(time.time()),
        "model": result.answer.model or "moteur",
        "choices": [{"index": 0, "message": _message(result), "finish_reason": finish_reason(result),
                     "logprobs": None}],
        "usage": usage(result),
        "moteur": moteur_part(result),
    }


def moteur_part(result: TurnResult) -> dict[str, Any]:
    """What moteur adds to OpenAI's shape: the session, the route, and whether the response cache answered
    ("hit", "miss", or "off" when it was not asked)."""
    return {"session_id": result.session_id, "route": dict(result.route), "cache": result.route.get("cache", "off")}


def usage(result: TurnResult) -> dict[str, int]:
    used = result.usage
    return {"prompt_tokens": used.input_tokens, "completion_tokens": used.output_tokens,
            "total_tokens": used.total_tokens}


def chunk(answer_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
          used: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    document: dict[str, Any] = {"id": f"chatcmpl-{answer_id}", "object": "chat.completion.chunk",
                                "created": created, "model": model or "moteur",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if used is not None:
        document["choices"], document["usage"] = [], used
    return document


def delta_of(event: TurnEvent) -> dict[str, Any] | None:
    """What a streamed event adds to the answer (None: nothing the caller sees; tools run server-side)."""
    if isinstance(event, TextDelta):
        return {"content": event.text}
    return None


def final_delta(result: TurnResult) -> dict[str, Any]:
    """The last chunk's delta: the tool calls left to the caller, if any (text came as deltas)."""
    calls = _tool_calls(result)
    return {"tool_calls": [{"index": n, **call} for n, call in enumerate(calls)]} if calls else {}


def _message(result: TurnResult) -> dict[str, Any]:
    calls = _tool_calls(result)
    message: dict[str, Any] = {"role": "assistant", "content": result.answer.content or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_calls(result: TurnResult) -> list[dict[str, Any]]:
    if result.status != REQUIRES_ACTION:
        return []
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments_json"]}}
            for c in result.pending]


def finish_reason(result: TurnResult) -> str:
    return "tool_calls" if result.status == REQUIRES_ACTION else _FINISH.get(result.finish_reason, "stop")
