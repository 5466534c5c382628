"""Building requests from friendly arguments, shared by the async and the sync client."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, TypeVar, cast

from moteur.v1 import common_pb2, files_pb2, gateway_pb2, memory_pb2

REQUEST_TYPES = {"chat": common_pb2.REQUEST_TYPE_CHAT, "summarize": common_pb2.REQUEST_TYPE_SUMMARIZE,
                 "extract": common_pb2.REQUEST_TYPE_EXTRACT, "code": common_pb2.REQUEST_TYPE_CODE}
PRIORITIES = {"critical": common_pb2.PRIORITY_CRITICAL, "high": common_pb2.PRIORITY_HIGH,
              "normal": common_pb2.PRIORITY_NORMAL, "low": common_pb2.PRIORITY_LOW,
              "batch": common_pb2.PRIORITY_BATCH}
FILE_FORMATS = {"pdf": common_pb2.FILE_FORMAT_PDF, "csv": common_pb2.FILE_FORMAT_CSV,
                "json": common_pb2.FILE_FORMAT_JSON, "markdown": common_pb2.FILE_FORMAT_MARKDOWN,
                "html": common_pb2.FILE_FORMAT_HTML, "xlsx": common_pb2.FILE_FORMAT_XLSX,
                "docx": common_pb2.FILE_FORMAT_DOCX}

MEMORY_KINDS = {"message": memory_pb2.MEMORY_KIND_MESSAGE, "fact": memory_pb2.MEMORY_KIND_FACT,
                "document_chunk": memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK, "reply": memory_pb2.MEMORY_KIND_REPLY}


E = TypeVar("E", bound=int)  # a proto enum (common_pb2.Priority, …): its values are ints


def enum_value(value: int | str, names: Mapping[str, E], what: str) -> E:
    """A proto enum number from a friendly name ("summarize") or the number itself ('' and 0: unset)."""
    if isinstance(value, int):
        return cast(E, value)  # numbers pass through: the server validates them
    if not value:
        return cast(E, 0)
    try:
        return names[value.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(names)}") from None


class ChatOptions(TypedDict, total=False):
    """The options of a chat turn (``chat``, ``chat_stream``); each left out has the gateway's default."""

    session_id: str  # continue this session; empty: a new one
    user_id: str  # act for this user (service keys only)
    request_type: int | str  # "chat", "summarize", "extract", "code" or the enum number
    priority: int | str  # "critical", "high", "normal", "low", "batch" or the enum number
    model_hint: str  # this model answers, or the call fails UNAVAILABLE naming it ...
    allow_model_substitution: bool  # ... unless another model may answer instead (the response's model says)
    output_format: int | str  # also render the answer as a file: "pdf", "csv", "json", "markdown", …
    output_template: str  # the template to render with
    metadata: Mapping[str, str] | None
    idempotency_key: str  # a retried turn with the same key answers once
    max_output_tokens: int  # 0: the model's default
    use_memory: bool | None  # None: the gateway's default (on)
    use_tools: bool | None
    use_cache: bool | None  # None: the tenant's response cache may answer (when the tenant turned it on)
    temperature: float | None  # 0 to 2; None: the route's
    top_p: float | None  # (0, 1]; None: the model's
    stop: Sequence[str]  # up to 4 sequences that end the answer
    json_schema: str | Mapping[str, Any]  # the answer is JSON valid against this schema (its text, or the schema)
    json_output: bool  # the answer is a JSON object
    tool_choice: str  # "auto", "none", "required" or a tool's name
    client_tools: Sequence[Mapping[str, Any] | gateway_pb2.ToolSpec]  # [{"name", "description", "input_schema",
    #                                                                     "output_schema"}]: tools the caller runs


class LimitOptions(TypedDict, total=False):
    """A scope's limits (``set_limits``); 0 is unlimited."""

    requests_per_minute: int
    tokens_per_minute: int
    concurrent_requests: int
    tokens_per_day: int
    tokens_per_month: int
    cost_micro_usd_per_month: int
    cost_micro_usd_per_day: int


def chat_request(
    message: str, *, session_id: str = "", user_id: str = "", request_type: int | str = 0,
    priority: int | str = 0, model_hint: str = "", output_format: int | str = 0, output_template: str = "",
    metadata: Mapping[str, str] | None = None, idempotency_key: str = "", max_output_tokens: int = 0,
    use_memory: bool | None = None, use_tools: bool | None = None, tool_choice: str = "",
    client_tools: Sequence[Mapping[str, Any] | gateway_pb2.ToolSpec] = (), allow_model_substitution: bool = False,
    use_cache: bool | None = None, temperature: float | None = None, top_p: float | None = None,
    stop: Sequence[str] = (),
    json_schema: str | Mapping[str, Any] = "", json_output: bool = False,
) -> gateway_pb2.ChatRequest:
    """The request of a chat turn (its keywords are :class:`ChatOptions`); an unknown enum name is a ValueError."""
    return gateway_pb2.ChatRequest(
        session_id=session_id, user_id=user_id, message=message,
        request_type=enum_value(request_type, REQUEST_TYPES, "request type"),
        priority=enum_value(priority, PRIORITIES, "priority"),
        model_hint=model_hint, allow_model_substitution=allow_model_substitution,
        output_format=enum_value(output_format, FILE_FORMATS, "output format"),
        output_template=output_template,
        metadata=common_pb2.Metadata(entries=dict(metadata or {})),
        idempotency_key=idempotency_key, max_output_tokens=max_output_tokens,
        use_memory=use_memory,  # None: unset, the gateway's default (on)
        use_tools=use_tools, tool_choice=tool_choice, client_tools=[tool_spec(t) for t in client_tools],
        use_cache=use_cache, temperature=temperature, top_p=top_p, stop=list(stop),
        json_schema=json_schema if isinstance(json_schema, str) else json.dumps(json_schema), json_output=json_output,
    )


def cache_settings(enabled: bool, request_types: Sequence[int | str] = (),
                   ttl_seconds: int = 0) -> gateway_pb2.ResponseCacheSettings:
    """The tenant's response cache as ``set_tenant_settings`` takes it (request types by name or number)."""
    return gateway_pb2.ResponseCacheSettings(
        enabled=enabled, ttl_seconds=ttl_seconds,
        request_types=[enum_value(t, REQUEST_TYPES, "request type") for t in request_types])


def template_request(name: str, source: str, formats: Sequence[int | str],
                     description: str = "") -> files_pb2.PutTemplateRequest:
    return files_pb2.PutTemplateRequest(name=name, source=source, description=description,
                                        formats=[enum_value(f, FILE_FORMATS, "file format") for f in formats])


def tool_spec(tool: Mapping[str, Any] | gateway_pb2.ToolSpec) -> gateway_pb2.ToolSpec:
    """A caller's tool from ``{"name", "description", "input_schema": {…}, "output_schema": {…}}``."""
    if isinstance(tool, gateway_pb2.ToolSpec):
        return tool
    output = tool.get("output_schema")
    return gateway_pb2.ToolSpec(name=tool["name"], description=tool.get("description", ""),
                                input_schema_json=json.dumps(tool.get("input_schema") or {}),
                                output_schema_json=json.dumps(output) if output is not None else "")


def tool_result(call_id: str, content: Any = None, *, error_code: str = "",
                error_message: str = "") -> common_pb2.ToolResult:
    """The result of one of the caller's tool calls: JSON ``content``, or an error the model will read."""
    if error_code:
        return common_pb2.ToolResult(call_id=call_id, ok=False, error_code=error_code, error_message=error_message)
    return common_pb2.ToolResult(call_id=call_id, ok=True, content_json=json.dumps(content))


def memory_kinds(kinds: Sequence[str]) -> list[memory_pb2.MemoryKind]:
    return [enum_value(k, MEMORY_KINDS, "memory kind") for k in kinds]


def auth_metadata(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")] if api_key else []


def limits_request(scope: str, limits: LimitOptions | Mapping[str, int]) -> gateway_pb2.SetLimitsRequest:
    try:
        return gateway_pb2.SetLimitsRequest(limits=gateway_pb2.Limits(scope=scope, **limits))
    except ValueError as exc:  # an unknown limit name
        names = ", ".join(f.name for f in gateway_pb2.Limits.DESCRIPTOR.fields[2:])  # after scope and tier
        raise ValueError(f"{exc}; limits are {names}") from None
