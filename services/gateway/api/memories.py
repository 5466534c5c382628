"""Long-term memory through the gateway: a user's memories and documents, read, searched, corrected, forgotten.

Every call is scoped to the caller's tenant (by its signed identity) and to the user its key acts for: a
user key reaches its own memories only, and another user's memory answers NOT_FOUND.
"""

from __future__ import annotations

from typing import Any

from moteur.gateway import validation as check
from moteur.gateway.api import convert
from moteur.gateway.api.rpc import Context, authenticated
from moteur.gateway.auth import Authenticator
from moteur.gateway.conversation import Conversation
from moteur.runtime.channels import call_service
from moteur.runtime.context import outgoing_timeout
from moteur.runtime.errors import InvalidArgument, NotFound
from moteur.runtime.identity import Identity
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.v1 import gateway_pb2, memory_pb2, memory_pb2_grpc


class MemoryRpcs:
    def __init__(self, auth: Authenticator, memory: memory_pb2_grpc.MemoryStub, conversation: Conversation) -> None:
        self.auth = auth
        self._memory = memory
        self._conversation = conversation

    @authenticated
    async def ListMemories(self, request: memory_pb2.ListMemoriesRequest, identity: Identity,
                           context: Context) -> memory_pb2.ListMemoriesResponse:
        forwarded = memory_pb2.ListMemoriesRequest()
        forwarded.CopyFrom(request)
        forwarded.user_id = convert.required_user(identity, request.user_id)
        return await self._call(self._memory.List, forwarded, identity)

    @authenticated
    async def SearchMemories(self, request: gateway_pb2.SearchMemoriesRequest, identity: Identity,
                             context: Context) -> memory_pb2.SearchResponse:
        user = convert.required_user(identity, request.user_id)
        return await self._call(self._memory.Search, memory_pb2.SearchRequest(
            text=request.text, user_id=user, kinds=request.kinds, top_k=request.top_k, min_score=request.min_score,
            session_id=request.session_id, created_after=request.created_after,
            created_before=request.created_before,
        ), identity)

    @authenticated
    async def GetMemoryHistory(self, request: gateway_pb2.GetMemoryHistoryRequest, identity: Identity,
                               context: Context) -> memory_pb2.FactHistoryResponse:
        user = convert.required_user(identity, request.user_id)
        if not request.memory_id:
            raise InvalidArgument("memory_id", "required")
        # Scoped to the caller's tenant and user by memory: another's fact has no history here (NOT_FOUND).
        return await self._call(
            self._memory.FactHistory, memory_pb2.FactHistoryRequest(user_id=user, id=request.memory_id), identity)

    @authenticated
    async def UpdateMemory(self, request: gateway_pb2.UpdateMemoryRequest, identity: Identity,
                           context: Context) -> memory_pb2.MemoryRecord:
        user = convert.required_user(identity, request.user_id)
        record = await self._own_memory(identity, user, request.memory_id)
        record.text = check.text_at_most(request.text, "text", MAX_TEXT_CHARS)
        if not record.text.strip():
            raise InvalidArgument("text", "must not be empty")
        record.ClearField("created_at")
        await self._call(self._memory.Upsert, memory_pb2.UpsertRequest(records=[record]), identity)
        return record

    @authenticated
    async def DeleteMemory(self, request: gateway_pb2.DeleteMemoryRequest, identity: Identity,
                           context: Context) -> memory_pb2.DeleteMemoriesResponse:
        user = convert.required_user(identity, request.user_id)
        record = await self._own_memory(identity, user, request.memory_id)
        return await self._call(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(ids=[record.id]), identity)

    @authenticated
    async def UpsertDocument(self, request: memory_pb2.UpsertDocumentRequest, identity: Identity,
                             context: Context) -> memory_pb2.UpsertDocumentResponse:
        # A user key stores its own documents; a service key the tenant's shared ones, or a named user's.
        return await self._call(self._memory.UpsertDocument, convert.acting(identity, request), identity)

    @authenticated
    async def DeleteDocument(self, request: gateway_pb2.DeleteDocumentRequest, identity: Identity,
                             context: Context) -> memory_pb2.DeleteMemoriesResponse:
        if not request.document_id:
            raise InvalidArgument("document_id", "required")
        return await self._call(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(
            document_id=request.document_id, user_id=identity.user,  # a user key: only its own documents
        ), identity)

    @authenticated
    async def ForgetUser(self, request: gateway_pb2.ForgetUserRequest, identity: Identity,
                         context: Context) -> memory_pb2.DeleteMemoriesResponse:
        user = convert.required_user(identity, request.user_id)
        # First the messages still on their way: sent after memory forgot, they would bring the user back.
        await self._conversation.forget_user(identity.tenant, user)
        return await self._call(self._memory.Delete, memory_pb2.DeleteMemoriesRequest(user_id=user), identity)

    async def _own_memory(self, identity: Identity, user: str, memory_id: str) -> memory_pb2.MemoryRecord:
        """The memory if it is this user's (in this tenant); NOT_FOUND otherwise, whoever it belongs to."""
        if not memory_id:
            raise InvalidArgument("memory_id", "required")
        listed = await self._call(
            self._memory.List, memory_pb2.ListMemoriesRequest(user_id=user, ids=[memory_id], page_size=1), identity
        )
        if not listed.records:
            raise NotFound(f"memory {memory_id} not found")
        return listed.records[0]

    async def _call(self, method: Any, request: Any, identity: Identity) -> Any:
        return await call_service(method, request, "memory", identity, outgoing_timeout(30.0))
