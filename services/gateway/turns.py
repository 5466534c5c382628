"""What a chat turn takes and gives: its input, its events and result, the pending turn a session keeps
while the caller runs its own tools, and a checked continuation.

These are plain dataclasses shared by the conversation loop (moteur.gateway.conversation) and the gRPC
layer (moteur.gateway.api), which converts them to and from protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from moteur.gateway.idempotency import fingerprint
from moteur.gateway.sessions import Session, StoredMessage
from moteur.gateway.tooling import ClientTool
from moteur.gateway.usage import TokenUsage
from moteur.v1 import common_pb2

COMPLETED, REQUIRES_ACTION = "completed", "requires_action"


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
    use_memory: bool = True
    use_tools: bool = True  # offer the registry's tools the tenant may use
    tool_choice: str = ""  # "" (auto), "none", "required" or a tool's name
    client_tools: tuple[ClientTool, ...] = ()
    output_format: int = common_pb2.FILE_FORMAT_UNSPECIFIED  # set: the answer is rendered into a file
    output_template: str = ""
    allow_model_substitution: bool = False  # another model may answer when the one named by model_hint cannot
    json_schema: str = ""  # set: the answer is JSON valid against this schema (its JSON text)
    json_output: bool = False  # the answer is a JSON object (any, without a schema)
    temperature: float | None = None  # None: the route's
    top_p: float | None = None  # None: the model's
    stop: tuple[str, ...] = ()  # sequences that end the answer
    use_cache: bool = True  # the tenant's response cache may answer (when the tenant turned it on)
    # Stateless (the OpenAI API without a session): the conversation so far, as the caller sent it; the turn
    # reads no session and stores no message (its usage is recorded). ``message`` may then be empty: the
    # history ends with tool results the model reads next.
    history: tuple[StoredMessage, ...] | None = None

    @property
    def stateless(self) -> bool:
        return self.history is not None

    def fingerprint(self) -> str:
        history = "\x1e".join(f"{m.role}:{m.content}" for m in self.history or ())
        return fingerprint(self.session_id, self.user, self.message, str(self.request_type), self.model_hint,
                           *((history,) if self.history is not None else ()))

    def continuation(self) -> TurnSettings:
        """What a SubmitToolResults needs of this turn's settings."""
        return TurnSettings(self.request_type, self.priority, self.model_hint, self.max_output_tokens,
                            self.use_tools, self.tool_choice, self.client_tools, self.output_format,
                            self.output_template, self.allow_model_substitution, self.json_schema,
                            self.json_output, self.temperature, self.stop, self.top_p)

    @classmethod
    def continued(cls, session: Session, question: str, saved: TurnSettings) -> TurnInput:
        return cls(session.id, session.user, question, saved.request_type, saved.priority,
                   saved.model_hint, saved.max_output_tokens, use_memory=False, use_tools=saved.use_tools,
                   tool_choice=saved.tool_choice, client_tools=saved.client_tools,
                   output_format=saved.output_format, output_template=saved.output_template,
                   allow_model_substitution=saved.allow_model_substitution, json_schema=saved.json_schema,
                   json_output=saved.json_output, temperature=saved.temperature, stop=saved.stop,
                   top_p=saved.top_p)


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """A turn's settings that its continuation needs (see :meth:`TurnInput.continuation`), kept in the
    pending turn; stored as the document ``pending.turn``."""

    request_type: int
    priority: int
    model_hint: str
    max_output_tokens: int
    use_tools: bool
    tool_choice: str
    client_tools: tuple[ClientTool, ...]
    # Added after the first pending turns were stored: a document may lack them.
    output_format: int = common_pb2.FILE_FORMAT_UNSPECIFIED
    output_template: str = ""
    allow_model_substitution: bool = False
    # The answer's shape and sampling, as the first request asked (the continuation answers the same request).
    json_schema: str = ""
    json_output: bool = False
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"request_type": self.request_type, "priority": self.priority, "model_hint": self.model_hint,
                "max_output_tokens": self.max_output_tokens, "use_tools": self.use_tools,
                "allow_model_substitution": self.allow_model_substitution,
                "tool_choice": self.tool_choice, "client_tools": [t.to_doc() for t in self.client_tools],
                "output_format": self.output_format, "output_template": self.output_template,
                **self._generation_doc()}

    def _generation_doc(self) -> dict[str, Any]:
        """The answer's shape and sampling, only where the request set them (most turns set none)."""
        given = {"json_schema": self.json_schema or None, "json_output": self.json_output or None,
                 "temperature": self.temperature, "stop": list(self.stop) or None, "top_p": self.top_p}
        return {name: value for name, value in given.items() if value is not None}  # a temperature of 0 is set

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> TurnSettings:
        return cls(doc["request_type"], doc["priority"], doc["model_hint"], doc["max_output_tokens"],
                   doc["use_tools"], doc["tool_choice"], tuple(ClientTool.from_doc(t) for t in doc["client_tools"]),
                   doc.get("output_format", common_pb2.FILE_FORMAT_UNSPECIFIED), doc.get("output_template", ""),
                   doc.get("allow_model_substitution", False), doc.get("json_schema", ""),
                   doc.get("json_output", False), doc.get("temperature"), tuple(doc.get("stop", ())), doc.get("top_p"))


@dataclass(frozen=True, slots=True)
class PendingTurn:
    """A turn waiting for the caller's tool results (status REQUIRES_ACTION) until a SubmitToolResults
    continues it; the session keeps it as its document's ``pending``."""

    id: str  # the id of the assistant message that asked for the calls
    calls: tuple[dict[str, str], ...]  # the caller's calls to answer: {"id", "name", "arguments_json"}
    rounds: int  # the rounds of tool calls done so far
    expires_at: datetime  # as read from MongoDB: naive, in UTC
    lease_until: datetime  # a SubmitToolResults holds the turn until then (see SessionStore.claim_pending)
    memory_prompt: str
    route: dict[str, str]
    question: StoredMessage  # the user's question; its id, content and created_at are stored
    turn: TurnSettings

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "calls": list(self.calls), "rounds": self.rounds, "expires_at": self.expires_at,
                "lease_until": self.lease_until, "memory_prompt": self.memory_prompt, "route": self.route,
                "question": {"_id": self.question.id, "content": self.question.content,
                             "created_at": self.question.created_at},
                "turn": self.turn.to_doc()}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PendingTurn:
        return cls(doc["id"], tuple(doc["calls"]), doc["rounds"], doc["expires_at"], doc["lease_until"],
                   doc["memory_prompt"], doc["route"], StoredMessage.from_doc({**doc["question"], "role": "user"}),
                   TurnSettings.from_doc(doc["turn"]))


@dataclass(slots=True)
class TurnResult:
    session_id: str
    user_message_id: str
    answer: StoredMessage
    finish_reason: int
    replay: bool = False
    route: dict[str, str] = field(default_factory=dict)
    status: str = COMPLETED  # or REQUIRES_ACTION: ``pending`` lists the caller's calls to answer
    pending: list[dict[str, str]] = field(default_factory=list)
    # REQUIRES_ACTION: what the session keeps for SubmitToolResults (not part of the answer)
    pending_turn: PendingTurn | None = None

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage.from_dict(self.answer.usage)

    def to_record(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "user_message_id": self.user_message_id,
                "answer": self.answer.to_doc(), "finish_reason": self.finish_reason, "route": self.route,
                "status": self.status, "pending": self.pending}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TurnResult:
        return cls(record["session_id"], record["user_message_id"], StoredMessage.from_doc(record["answer"]),
                   record["finish_reason"], replay=True, route=record.get("route", {}),
                   status=record.get("status", COMPLETED), pending=record.get("pending", []))


@dataclass(frozen=True, slots=True)
class TurnStarted:
    session_id: str
    user_message_id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    call: common_pb2.ToolCall
    runs_on_caller: bool = False


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call: common_pb2.ToolCall
    result: common_pb2.ToolResult


TurnEvent = TurnStarted | TextDelta | ToolStarted | ToolFinished | TurnResult


@dataclass(frozen=True, slots=True)
class Continuation:
    """A checked SubmitToolResults, ready for admission and then :meth:`Conversation.resume`."""

    session: Session
    turn: TurnInput
    pending: PendingTurn
    results: list[common_pb2.ToolResult]
