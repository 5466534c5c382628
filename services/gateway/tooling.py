"""The tools of one chat turn: the registry's tools the tenant may use (Tools.ListTools, cached), the
caller's own tools (declared in the request, run by the caller), and how a call becomes a result.

Tool failures are results the model reads, never failures of the turn: a tool the model invented, the
tools service down, a call past its time all become a ``ToolResult`` with ``ok`` false, so the model can
answer without it. Only the caller's own mistakes (a malformed declaration, results for calls nobody
made) are gRPC errors.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import structlog
from cachetools import TTLCache

from moteur.gateway.metrics import GATEWAY_TOOL_CALLS, TOOL_LISTINGS
from moteur.runtime import jsontext
from moteur.runtime.channels import call_service
from moteur.runtime.errors import InvalidArgument, MoteurError
from moteur.runtime.identity import Identity
from moteur.runtime.tooldefs import MAX_TOOLS, check_description, check_tool_name, check_unique, parse_schema
from moteur.runtime.tracing import tracer
from moteur.v1 import common_pb2, gateway_pb2, router_pb2, tools_pb2, tools_pb2_grpc

log = structlog.get_logger("moteur.gateway.tools")
_tracer = tracer("moteur.gateway")

MAX_RESULT_BYTES = 64_000  # a caller's tool result, as the registry caps its own tools' output
_CHOICES = ("", "auto", "none", "required")


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A tool the caller declared in its chat request and runs itself (see SubmitToolResults)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "output_schema": self.output_schema}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ClientTool:
        return cls(doc["name"], doc["description"], doc["input_schema"], doc.get("output_schema"))


def client_tools(specs: Sequence[gateway_pb2.ToolSpec]) -> tuple[ClientTool, ...]:
    """The caller's tool declarations, checked as the router and the registry check theirs."""
    if len(specs) > MAX_TOOLS:
        raise InvalidArgument("client_tools", f"at most {MAX_TOOLS} tools, got {len(specs)}")
    tools = tuple(
        ClientTool(
            check_tool_name(f"client_tools[{n}].name", s.name),
            check_description(f"client_tools[{n}].description", s.description),
            parse_schema(f"client_tools[{n}].input_schema_json", s.input_schema_json),
            parse_schema(f"client_tools[{n}].output_schema_json", s.output_schema_json)
            if s.output_schema_json.strip() else None,
        )
        for n, s in enumerate(specs)
    )
    check_unique("client_tools", [t.name for t in tools])
    return tools


def tool_choice(value: str) -> str:
    """Checked for its form here; a tool's name is checked against the turn's tools once they are known."""
    if value not in _CHOICES:
        check_tool_name("tool_choice", value)
    return "" if value == "auto" else value


@dataclass(slots=True)
class TurnTools:
    """What one turn offers the model."""

    registry: dict[str, tools_pb2.Tool] = field(default_factory=dict)
    client: dict[str, ClientTool] = field(default_factory=dict)
    status: str = "off"  # "offered", "none" (nothing allowed), "off" (not asked), "unavailable"

    def model_tools(self) -> list[router_pb2.ModelTool]:
        offered = [router_pb2.ModelTool(name=t.name, description=t.description,
                                        parameters_schema_json=t.input_schema_json) for t in self.registry.values()]
        offered += [router_pb2.ModelTool(name=t.name, description=t.description,
                                         parameters_schema_json=json.dumps(t.input_schema))
                    for t in self.client.values()]
        return offered

    def names(self) -> list[str]:
        return [*self.registry, *self.client]

    def check_choice(self, choice: str) -> None:
        if choice in _CHOICES:
            if choice in ("required",) and not self.names():
                raise InvalidArgument("tool_choice", "'required' but this turn has no tools to call")
            return
        if choice not in self.registry and choice not in self.client:
            raise InvalidArgument("tool_choice", f"no tool named {choice!r} in this turn; available: "
                                  f"{', '.join(self.names()) or 'none'}")


class ToolBox:
    def __init__(self, stub: tools_pb2_grpc.ToolsStub, call_timeout: float, cache_seconds: float) -> None:
        self._stub = stub
        self._call_timeout = call_timeout
        # A tenant's tools change with its policy file or its MCP servers: a short cache spares each turn
        # a round trip to the tools service.
        self._listed: TTLCache[tuple[str, str], list[tools_pb2.Tool]] = TTLCache(4096, cache_seconds)

    async def for_turn(self, identity: Identity, client: Sequence[ClientTool], use_registry: bool) -> TurnTools:
        tools = TurnTools(client={t.name: t for t in client})
        if use_registry:
            try:
                listed = await self.list(identity)
            except MoteurError as exc:
                TOOL_LISTINGS.labels("unavailable").inc()
                log.warning("tools.list_failed", error=exc.message)
                tools.status = "unavailable"  # the turn goes on with the caller's tools only
            else:
                clashes = sorted(t.name for t in listed if t.name in tools.client)
                if clashes:
                    raise InvalidArgument("client_tools", f"{', '.join(clashes)} already name tools of this "
                                          "tenant's registry; rename yours")
                tools.registry = {t.name: t for t in listed}
        if tools.status != "unavailable":
            tools.status = "offered" if tools.names() else ("none" if use_registry else "off")
        return tools

    async def list(self, identity: Identity) -> list[tools_pb2.Tool]:
        """The registry's tools ``identity``'s tenant and tier may use (cached briefly)."""
        key = (identity.tenant, identity.tier)
        listed = self._listed.get(key)
        if listed is None:
            reply = await call_service(self._stub.ListTools, tools_pb2.ListToolsRequest(), "tools", identity,
                                       self._call_timeout)
            listed = self._listed[key] = list(reply.tools)
            TOOL_LISTINGS.labels("fetched").inc()
        return listed

    async def invoke(self, identity: Identity, session_id: str, user: str, call: common_pb2.ToolCall,
                     tools: TurnTools, timeout: float) -> common_pb2.ToolResult:
        """A registry tool's result; every failure is a result the model reads."""
        started = time.perf_counter()
        with _tracer.start_as_current_span("tool.invoke", attributes={"tool.name": call.name}):
            if call.name not in tools.registry:
                result = failed(call.id, "unknown_tool", f"no tool named {call.name!r}; available: "
                                f"{', '.join(tools.names()) or 'none'}")
            elif timeout <= 0:
                result = failed(call.id, "timeout", "the turn's time ran out before this tool could run")
            else:
                request = tools_pb2.InvokeRequest(call=call, session_id=session_id, user_id=user)
                try:
                    result = await call_service(self._stub.Invoke, request, "tools", identity, timeout)
                except MoteurError as exc:
                    code = "timeout" if exc.code.name == "DEADLINE_EXCEEDED" else "unavailable"
                    result = failed(call.id, code, exc.message)
        result.duration_ms = result.duration_ms or round((time.perf_counter() - started) * 1000)
        GATEWAY_TOOL_CALLS.labels("registry", "ok" if result.ok else result.error_code or "error").inc()
        return result

    def invoke_all(
        self, identity: Identity, session_id: str, user: str, calls: Sequence[common_pb2.ToolCall],
        tools: TurnTools, timeout: float, parallel: int,
    ) -> builtins.list[asyncio.Future[tuple[common_pb2.ToolCall, common_pb2.ToolResult]]]:
        """Several calls at once (at most ``parallel`` in flight), as futures in the order they finish."""
        slots = asyncio.Semaphore(parallel)

        async def one(call: common_pb2.ToolCall) -> tuple[common_pb2.ToolCall, common_pb2.ToolResult]:
            async with slots:
                return call, await self.invoke(identity, session_id, user, call, tools, timeout)

        return list(asyncio.as_completed([one(c) for c in calls]))


def failed(call_id: str, code: str, message: str) -> common_pb2.ToolResult:
    return common_pb2.ToolResult(call_id=call_id, ok=False, error_code=code, error_message=message)


def model_view(result: common_pb2.ToolResult) -> str:
    """What the model reads of a result: its content, or its error."""
    if result.ok:
        return result.content_json
    return json.dumps({"error": result.error_code, "message": result.error_message})


def result_doc(result: common_pb2.ToolResult) -> dict[str, Any]:
    return {"call_id": result.call_id, "ok": result.ok, "content_json": result.content_json,
            "error_code": result.error_code, "error_message": result.error_message,
            "duration_ms": result.duration_ms, "truncated": result.truncated}


def check_client_results(
    results: Sequence[common_pb2.ToolResult], pending: Sequence[Mapping[str, str]], tools: Mapping[str, ClientTool],
) -> list[common_pb2.ToolResult]:
    """The caller's results, one per pending call, in the calls' order; anything else is refused."""
    waiting = {c["id"]: c for c in pending}
    given: dict[str, common_pb2.ToolResult] = {}
    for n, result in enumerate(results):
        where = f"results[{n}]"
        if result.call_id not in waiting:
            raise InvalidArgument(f"{where}.call_id", f"{result.call_id[:80]!r} is not a pending call of this "
                                  f"session; pending: {', '.join(waiting)}")
        if result.call_id in given:
            raise InvalidArgument(f"{where}.call_id", f"{result.call_id!r} is answered twice")
        if len(result.content_json.encode()) > MAX_RESULT_BYTES:
            raise InvalidArgument(f"{where}.content_json", f"at most {MAX_RESULT_BYTES:,} bytes")
        if result.ok:
            _check_content(where, result.content_json, tools.get(waiting[result.call_id]["name"]))
        elif not result.error_code:
            raise InvalidArgument(f"{where}.error_code", "required when ok is false (e.g. 'failed', 'timeout')")
        given[result.call_id] = result
    missing = [call_id for call_id in waiting if call_id not in given]
    if missing:
        raise InvalidArgument("results", f"no result for pending call(s) {', '.join(missing)}; answer every "
                              "pending call in one request (ok=false with an error_code for a call that failed)")
    return [given[call_id] for call_id in waiting]


def _check_content(where: str, content: str, tool: ClientTool | None) -> None:
    try:
        value = jsontext.loads(content)
    except ValueError as exc:
        raise InvalidArgument(f"{where}.content_json", f"is not JSON: {exc}") from None
    if tool is not None and tool.output_schema is not None:
        try:
            jsonschema.validate(value, tool.output_schema, cls=jsonschema.Draft202012Validator)
        except RecursionError:
            raise InvalidArgument(f"{where}.content_json", "nested too deeply to check") from None
        except jsonschema.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path) or "content"
            raise InvalidArgument(f"{where}.content_json", f"does not match {tool.name}'s output schema: "
                                  f"{path}: {exc.message}") from None
