"""``knowledge_search``: what the memory service holds for the caller — their documents, facts and past
messages, and the documents their tenant shares — nearest to a query.

Always scoped to the caller's tenant (the mesh identity) and user (see :class:`Caller`); a caller acting
for no user (a service key) finds the tenant's shared documents only. Memory's ``Search`` treats an empty
user as "any user", so the shared documents come from a second search, over-fetched and kept only where
the record has no user. Memory down is an ``unavailable`` result the model can read, not a failed call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from moteur.runtime.channels import call_service
from moteur.runtime.errors import MoteurError
from moteur.runtime.identity import Identity, mesh_identity
from moteur.tools.registry import ToolError, ToolSpec, current_caller
from moteur.v1 import memory_pb2, memory_pb2_grpc

KINDS = {"document": memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK, "fact": memory_pb2.MEMORY_KIND_FACT,
         "message": memory_pb2.MEMORY_KIND_MESSAGE}
_NAMES = {value: name for name, value in KINDS.items()}
SHARED_OVERFETCH = 50  # hits asked for when looking for the tenant's shared documents among every user's


class KnowledgeSearch:
    def __init__(self, memory: memory_pb2_grpc.MemoryStub, timeout_seconds: float = 3.0) -> None:
        self._memory = memory
        self._timeout = timeout_seconds

    def spec(self) -> ToolSpec:
        kinds = {"type": "string", "enum": list(KINDS)}
        return ToolSpec(
            "knowledge_search",
            "Search the user's documents, remembered facts and past messages, and the documents their "
            "organisation shares; returns the nearest passages with a similarity score.",
            {"type": "object", "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1000},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
                "kinds": {"type": "array", "items": kinds, "uniqueItems": True, "minItems": 1},
            }, "required": ["query"], "additionalProperties": False},
            {"type": "object", "properties": {"results": {"type": "array", "items": {
                "type": "object", "properties": {
                    "text": {"type": "string"}, "score": {"type": "number"}, "kind": kinds,
                    "session_id": {"type": "string"}, "document_id": {"type": "string"},
                    "shared": {"type": "boolean"},
                }, "required": ["text", "score", "kind"]}}}, "required": ["results"]},
            timeout_ms=round(self._timeout * 1000) + 500, max_concurrency=32,
        )

    async def __call__(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        caller = current_caller()
        identity = mesh_identity()  # the caller's token, forwarded
        top_k = arguments.get("top_k", 5)
        kinds = [KINDS[k] for k in arguments.get("kinds", list(KINDS))]
        query = arguments["query"]
        searches = []
        if caller.user:
            searches.append(self._search(identity, memory_pb2.SearchRequest(
                text=query, top_k=top_k, user_id=caller.user, kinds=kinds)))
        if memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK in kinds:
            searches.append(self._search(identity, memory_pb2.SearchRequest(
                text=query, top_k=SHARED_OVERFETCH, kinds=[memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK])))
        hits: dict[str, memory_pb2.SearchHit] = {}
        for found in await asyncio.gather(*searches):
            for hit in found.hits:
                if hit.record.user_id in ("", caller.user):  # the second search sees every user's documents
                    hits[hit.record.id] = hit
        nearest = sorted(hits.values(), key=lambda h: h.score, reverse=True)[:top_k]
        return {"results": [_result(h) for h in nearest]}

    async def _search(self, identity: Identity, request: memory_pb2.SearchRequest) -> memory_pb2.SearchResponse:
        try:
            return await call_service(self._memory.Search, request, "memory", identity, self._timeout)
        except MoteurError as exc:
            code = "unavailable" if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else "search_failed"
            raise ToolError(code, f"knowledge search is not available right now: {exc.message}") from None


def _result(hit: memory_pb2.SearchHit) -> dict[str, Any]:
    record = hit.record
    result: dict[str, Any] = {"text": record.text, "score": round(hit.score, 4), "kind": _NAMES[record.kind]}
    if record.session_id:
        result["session_id"] = record.session_id
    if record.kind == memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK:
        result["document_id"] = record.source_ids[0] if record.source_ids else record.id.rpartition(".")[0]
        result["shared"] = not record.user_id
    return result
