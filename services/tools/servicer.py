"""moteur.v1.Tools over gRPC: the tools a caller may use, each call audited in MongoDB (who, which tool, a
hash of the arguments — never the arguments themselves —, the outcome and how long it took)."""

from __future__ import annotations

import datetime
import hashlib
import json

import grpc
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.errors import InvalidArgument, NotFound
from moteur.runtime.identity import mesh_identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import insert_new
from moteur.tools.access import ToolAccess
from moteur.tools.registry import TOOL_NAME, Caller, Registry, ToolSpec
from moteur.v1 import common_pb2, tools_pb2, tools_pb2_grpc

MAX_ARGUMENTS_BYTES = 64_000


class ToolsServicer(tools_pb2_grpc.ToolsServicer):
    def __init__(self, registry: Registry, access: ToolAccess, db: AsyncDatabase) -> None:
        self._registry = registry
        self._access = access
        self._audit = db["tool_calls"]

    async def ensure_indexes(self) -> None:
        await self._audit.create_index([("tenant", 1), ("at", -1)])

    async def ListTools(
        self, request: tools_pb2.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tools_pb2.ListToolsResponse:
        caller = _caller(context, "", "")
        return tools_pb2.ListToolsResponse(tools=[_tool(spec) for spec in self._access.tools_for(caller)])

    async def Invoke(
        self, request: tools_pb2.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ToolResult:
        caller = _caller(context, request.user_id, request.session_id)
        call = request.call
        if not call.id:
            raise InvalidArgument("call.id", "required: the result echoes it")
        if not TOOL_NAME.fullmatch(call.name):
            raise InvalidArgument("call.name", "1 to 64 characters among letters, digits, '_' and '-'")
        if self._access.lookup(caller, call.name) is None:
            # The same answer whether the tool does not exist or is another tenant's or tier's.
            usable = ", ".join(s.name for s in self._access.tools_for(caller)) or "none"
            raise NotFound(f"tool {call.name!r} is not registered; known tools: {usable}")
        if len(call.arguments_json.encode()) > MAX_ARGUMENTS_BYTES:
            raise InvalidArgument("call.arguments_json", f"at most {MAX_ARGUMENTS_BYTES:,} bytes")
        outcome = await self._registry.invoke(call.name, call.arguments_json, caller,
                                              self._access.max_concurrent_calls(caller.tenant))
        await insert_new(self._audit, {
            "_id": new_id(), "tenant": caller.tenant, "user": caller.user, "session": caller.session_id,
            "tool": call.name, "call_id": call.id,
            "arguments_sha256": hashlib.sha256(call.arguments_json.encode()).hexdigest(),
            "ok": outcome.ok, "error_code": outcome.error_code, "duration_ms": outcome.duration_ms,
            "truncated": outcome.truncated, "at": datetime.datetime.now(datetime.UTC),
        })
        return common_pb2.ToolResult(
            call_id=call.id, ok=outcome.ok, content_json=outcome.content_json, error_code=outcome.error_code,
            error_message=outcome.error_message, duration_ms=outcome.duration_ms, truncated=outcome.truncated,
        )


def _caller(context: grpc.aio.ServicerContext, user_id: str, session_id: str) -> Caller:
    """The mesh identity, acting for ``user_id``: a user key acts for its own user only."""
    identity = mesh_identity(context)
    if user_id and identity.user and user_id != identity.user:
        raise InvalidArgument("user_id", "a user's key acts for that user only; leave it empty or name them")
    return Caller(identity.tenant, user_id or identity.user, identity.tier, session_id)


def _tool(spec: ToolSpec) -> tools_pb2.Tool:
    return tools_pb2.Tool(
        name=spec.name, description=spec.description, input_schema_json=json.dumps(spec.input_schema),
        output_schema_json=json.dumps(spec.output_schema), timeout_ms=spec.timeout_ms,
        side_effects=spec.side_effects, source=spec.source, tiers=list(spec.tiers),
    )
