"""moteur.v1.Memory over gRPC: embeddings, and memories stored and searched in Milvus, per tenant.

Extract reads a turn for facts about its user and merges them into their long-term memory (facts.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from moteur.memory.answers import AnswerCache
from moteur.memory.documents import DocumentStore
from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.facts import FactMemory, Turn
from moteur.memory.forgotten import ForgottenUsers, created_ms_of
from moteur.memory.metrics import ANSWER_CACHE_CALLS
from moteur.memory.migration import Reembedding
from moteur.memory.store import Kind, MemoryRecord, SearchFilter, VectorStore
from moteur.runtime.errors import InvalidArgument, NotFound
from moteur.runtime.identity import mesh_identity
from moteur.runtime.ids import new_id
from moteur.runtime.memory_limits import MAX_REPLY_CHARS, MAX_TEXT_CHARS
from moteur.runtime.timestamps import from_milliseconds, to_milliseconds
from moteur.v1 import memory_pb2, memory_pb2_grpc

MAX_TEXTS = 256
MAX_TOP_K = 100
MAX_DOCUMENT_CHARS = 1_000_000
_DOCUMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")
_CONTEXT = re.compile(r"[0-9a-f]{64}")
MAX_CACHE_TOP_K = 16
MAX_ANSWER_BYTES = 65_535
MAX_ANSWER_TTL_SECONDS = 7 * 24 * 3600
# The collections' columns are bounded (store.py, answers.py): longer values are the caller's mistake.
ID_BYTES, USER_ID_BYTES, SESSION_ID_BYTES = 64, 128, 64

_KINDS: dict[memory_pb2.MemoryKind, Kind] = {
    memory_pb2.MEMORY_KIND_MESSAGE: "message", memory_pb2.MEMORY_KIND_FACT: "fact",
    memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK: "document_chunk", memory_pb2.MEMORY_KIND_REPLY: "reply",
}
_KIND_VALUES = {name: value for value, name in _KINDS.items()}
_ACTIONS = {"add": memory_pb2.FACT_ACTION_ADD, "update": memory_pb2.FACT_ACTION_UPDATE,
            "delete": memory_pb2.FACT_ACTION_DELETE, "none": memory_pb2.FACT_ACTION_NONE,
            "edit": memory_pb2.FACT_ACTION_EDIT}

class MemoryServicer(memory_pb2_grpc.MemoryServicer):
    def __init__(self, embedder: BatchingEmbedder, store: VectorStore, facts: FactMemory,
                 documents: DocumentStore, forgotten: ForgottenUsers, migration: Reembedding,
                 answers: AnswerCache) -> None:
        self._answers = answers
        self._migration = migration
        self._documents = documents
        self._forgotten = forgotten
        self._embedder = embedder
        self._store = store
        self._facts = facts

    async def Embed(
        self, request: memory_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.EmbedResponse:
        mesh_identity(context)
        texts = _texts(list(request.texts), "texts")
        vectors = await self._embedder.embed(texts, query=request.query)
        return memory_pb2.EmbedResponse(
            embeddings=[memory_pb2.Embedding(values=row) for row in vectors.tolist()],
            model=self._embedder.model_id, dimensions=vectors.shape[1],
        )

    async def Upsert(
        self, request: memory_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpsertResponse:
        identity = mesh_identity(context)
        if not 1 <= len(request.records) <= MAX_TEXTS:
            raise InvalidArgument("records", f"between 1 and {MAX_TEXTS} records, got {len(request.records)}")
        for index, given in enumerate(request.records):
            _text(given.text, f"records[{index}].text")
            for name, value, limit in (("id", given.id, ID_BYTES), ("user_id", given.user_id, USER_ID_BYTES),
                                       ("session_id", given.session_id, SESSION_ID_BYTES),
                                       ("source_ids", ",".join(given.source_ids), 2048)):
                _at_most(value, f"records[{index}].{name}", limit)
        records = []
        for index, r in enumerate(request.records):
            kind = _KINDS.get(r.kind)
            if kind is None:
                raise InvalidArgument(f"records[{index}].kind", "MESSAGE, REPLY, FACT or DOCUMENT_CHUNK")
            created = to_milliseconds(f"records[{index}].created_at", r.created_at) if r.HasField("created_at") \
                else None
            records.append(MemoryRecord(
                id=r.id or new_id(), tenant=identity.tenant, user=r.user_id, session=r.session_id, kind=kind,
                text=r.text, model=self._embedder.model_id, source_ids=tuple(r.source_ids),
                **({"created_at_ms": created} if created else {}),
            ))
        # A message sent before its user was forgotten (an outbox batch in flight then) would bring them back.
        records = await self._forgotten.keep_newer(
            identity.tenant, [(r.user, r.created_at_ms, r) for r in records], "upsert")
        if not records:
            return memory_pb2.UpsertResponse()
        # Facts keep the trace of a hand edit: their previous text is read first (messages need not be).
        kept = {r.id for r in records}
        edited = [r.id for r in request.records if r.id in kept and r.kind == memory_pb2.MEMORY_KIND_FACT]
        before = {r.id: r for r in await self._store.get(SearchFilter(tenant=identity.tenant, ids=edited))} \
            if edited else {}
        vectors = await self._embedder.embed([r.text for r in records])
        await self._store.upsert(records, vectors)
        for record in records:  # an edited fact keeps the trace of what it said
            previous = before.get(record.id)
            if record.kind == "fact" and previous is not None and previous.text != record.text:
                await self._facts.edited(record, previous.text)
        return memory_pb2.UpsertResponse(ids=[r.id for r in records])

    async def Search(
        self, request: memory_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.SearchResponse:
        identity = mesh_identity(context)
        top_k = request.top_k or 5
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument("top_k", f"between 1 and {MAX_TOP_K}, got {request.top_k}")
        if not -1 <= request.min_score <= 1:
            raise InvalidArgument("min_score", "a cosine similarity, between -1 and 1")
        vector = await self._query_vector(request)
        where = SearchFilter(
            tenant=identity.tenant, model=self._embedder.model_id, user=request.user_id, session=request.session_id,
            kinds=self._kinds(request.kinds),
            created_after_ms=to_milliseconds("created_after", request.created_after)
            if request.HasField("created_after") else 0,
            created_before_ms=to_milliseconds("created_before", request.created_before)
            if request.HasField("created_before") else 0,
        )
        hits = await self._store.search(vector, where, top_k, request.min_score)
        return memory_pb2.SearchResponse(
            hits=[memory_pb2.SearchHit(record=_record(h.record), score=h.score) for h in hits],
            embedding_model=self._embedder.model_id,
        )

    async def Delete(
        self, request: memory_pb2.DeleteMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.DeleteMemoriesResponse:
        identity = mesh_identity(context)
        if request.document_id and not _DOCUMENT_ID.fullmatch(request.document_id):
            raise InvalidArgument("document_id", "1 to 48 characters among letters, digits, '_' and '-'")
        for name, value, limit in (("user_id", request.user_id, USER_ID_BYTES),
                                   ("session_id", request.session_id, SESSION_ID_BYTES),
                                   *(("ids", i, ID_BYTES) for i in request.ids)):
            _at_most(value, name, limit)
        if request.document_id:
            return memory_pb2.DeleteMemoriesResponse(
                deleted=await self._documents.delete(identity.tenant, request.document_id, request.user_id))
        if not (request.ids or request.user_id or request.session_id):
            raise InvalidArgument("ids", "name the memories to delete: ids, a document, or a user and/or a session")
        forgets_user = bool(request.user_id) and not (request.session_id or request.ids or request.kinds)
        if forgets_user:  # before deleting: what is still on its way for the user must not bring them back
            await self._forgotten.forget(identity.tenant, request.user_id)
        where = SearchFilter(tenant=identity.tenant, user=request.user_id, session=request.session_id,
                             ids=list(request.ids), kinds=self._kinds(request.kinds))
        facts = [r for r in await self._store.get(where, limit=len(request.ids)) if r.kind == "fact"] \
            if request.ids else []
        deleted = await self._store.delete(where)
        await self._facts.deleted(facts)
        if forgets_user:
            await self._facts.forget(identity.tenant, request.user_id)
            await self._documents.forget(identity.tenant, request.user_id)
            await self._answers.clear(identity.tenant, request.user_id)
        return memory_pb2.DeleteMemoriesResponse(deleted=deleted)

    async def LookupAnswer(
        self, request: memory_pb2.LookupAnswerRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.LookupAnswerResponse:
        identity = mesh_identity(context)
        question = _cache_question(request)
        if not 0 < request.min_score <= 1:
            raise InvalidArgument("min_score", f"a cosine in (0, 1], got {request.min_score:g}")
        if not 0 <= request.top_k <= MAX_CACHE_TOP_K:
            raise InvalidArgument("top_k", f"between 1 and {MAX_CACHE_TOP_K} (0 means 4), got {request.top_k}")
        found = await self._answers.lookup(identity.tenant, request.context, question, request.min_score,
                                           request.top_k or 4)
        ANSWER_CACHE_CALLS.labels("lookup", "found" if found else "none").inc()
        return memory_pb2.LookupAnswerResponse(
            answers=[memory_pb2.CachedAnswer(id=entry.id, question=entry.question, answer_json=entry.answer,
                                             score=score, created_at=from_milliseconds(entry.created_at_ms),
                                             expires_at=from_milliseconds(entry.expires_at_ms))
                     for entry, score in found],
            embedding_model=self._embedder.model_id)

    async def StoreAnswer(
        self, request: memory_pb2.StoreAnswerRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.StoreAnswerResponse:
        identity = mesh_identity(context)
        question = _cache_question(request)
        if not 0 < len(request.answer_json.encode()) <= MAX_ANSWER_BYTES:
            raise InvalidArgument("answer_json", f"1 to {MAX_ANSWER_BYTES:,} bytes")
        if not 0 < request.ttl_seconds <= MAX_ANSWER_TTL_SECONDS:
            raise InvalidArgument("ttl_seconds", f"1 to {MAX_ANSWER_TTL_SECONDS:,}, got {request.ttl_seconds}")
        _user_id(request.user_id)
        entry = await self._answers.store(identity.tenant, request.context, request.user_id, question,
                                          request.answer_json, request.ttl_seconds)
        ANSWER_CACHE_CALLS.labels("store", "ok").inc()
        return memory_pb2.StoreAnswerResponse(id=entry.id)

    async def ClearAnswers(
        self, request: memory_pb2.ClearAnswersRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ClearAnswersResponse:
        identity = mesh_identity(context)
        return memory_pb2.ClearAnswersResponse(deleted=await self._answers.clear(identity.tenant))

    async def UpsertDocument(
        self, request: memory_pb2.UpsertDocumentRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.UpsertDocumentResponse:
        identity = mesh_identity(context)
        document_id = request.document_id or new_id()
        if not _DOCUMENT_ID.fullmatch(document_id):
            raise InvalidArgument("document_id", "1 to 48 characters among letters, digits, '_' and '-'")
        _user_id(request.user_id)
        if len(request.title) > 256:
            raise InvalidArgument("title", f"at most 256 characters, got {len(request.title):,}")
        if not request.text.strip():
            raise InvalidArgument("text", "must not be empty")
        if len(request.text) > MAX_DOCUMENT_CHARS:
            raise InvalidArgument("text", f"at most {MAX_DOCUMENT_CHARS:,} characters, got {len(request.text):,}; "
                                  "split the document")
        chunk = request.chunk_chars or 1000
        if not 200 <= chunk <= 4000:
            raise InvalidArgument("chunk_chars", f"between 200 and 4,000, got {request.chunk_chars}")
        ids = await self._documents.upsert(identity.tenant, request.user_id, document_id, request.title,
                                           request.text, chunk)
        return memory_pb2.UpsertDocumentResponse(document_id=document_id, chunk_ids=ids)

    async def List(
        self, request: memory_pb2.ListMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ListMemoriesResponse:
        identity = mesh_identity(context)
        _user_id(request.user_id, "memories are a user's: name them")
        size = request.page_size or 50
        if not 1 <= size <= 200:
            raise InvalidArgument("page_size", f"between 1 and 200, got {request.page_size}")
        if len(request.ids) > 200:
            raise InvalidArgument("ids", "at most 200")
        if request.page_token and not request.page_token.isdigit():
            raise InvalidArgument("page_token", "not a token this service gave; start without one")
        start = int(request.page_token or 0)
        where = SearchFilter(tenant=identity.tenant, user=request.user_id, kinds=self._kinds(request.kinds),
                             ids=list(request.ids))
        records = sorted(await self._store.get(where, limit=16_384), key=lambda r: (r.created_at_ms, r.id),
                         reverse=True)
        page = records[start:start + size]
        more = start + size < len(records)
        return memory_pb2.ListMemoriesResponse(records=[_record(r) for r in page],
                                               next_page_token=str(start + size) if more else "",
                                               migration=await self._migration_status(identity.tenant))

    async def Extract(
        self, request: memory_pb2.ExtractRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ExtractResponse:
        identity = mesh_identity(context)
        _user_id(request.user_id, "facts are about a user: name them")
        _text(request.user_message, "user_message")
        _at_most(request.session_id, "session_id", SESSION_ID_BYTES)
        if len(request.assistant_message) > MAX_REPLY_CHARS:
            raise InvalidArgument("assistant_message", f"at most {MAX_REPLY_CHARS:,} characters")
        created_ms = created_ms_of(request.source_ids)
        if created_ms is not None and not await self._forgotten.keep_newer(
                identity.tenant, [(request.user_id, created_ms, request)], "extract"):
            return memory_pb2.ExtractResponse()  # the user was forgotten after this message: nothing is read
        changes, extractor = await self._facts.extract(Turn(
            identity.tenant, request.user_id, request.session_id, request.user_message, request.assistant_message,
            tuple(request.source_ids),
        ), rules_only=request.rules_only)
        return memory_pb2.ExtractResponse(
            changes=[memory_pb2.FactChange(action=_ACTIONS[c.action], fact=_record(c.fact),
                                           previous_text=c.previous_text) for c in changes],
            extractor=extractor,
        )

    async def FactHistory(
        self, request: memory_pb2.FactHistoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.FactHistoryResponse:
        identity = mesh_identity(context)
        _user_id(request.user_id, "a fact's history is its user's: name them")
        if not request.id or len(request.id.encode()) > 64:
            raise InvalidArgument("id", "the fact's memory id: 1 to 64 bytes")
        changes = await self._facts.history(identity.tenant, request.user_id, request.id)
        if not changes:
            raise NotFound(f"no history for fact {request.id} of user {request.user_id}")
        return memory_pb2.FactHistoryResponse(changes=[_history_entry(c) for c in changes])

    async def _migration_status(self, tenant: str) -> memory_pb2.EmbeddingMigration:
        status = await self._migration.status(tenant)
        return memory_pb2.EmbeddingMigration(model=status.model, current=status.current, remaining=status.remaining,
                                             from_models=status.from_models, running=status.running)

    @staticmethod
    def _kinds(values: Sequence[memory_pb2.MemoryKind]) -> list[Kind]:
        kinds = []
        for index, kind in enumerate(values):
            if kind not in _KINDS:
                raise InvalidArgument(f"kinds[{index}]", "MESSAGE, REPLY, FACT or DOCUMENT_CHUNK")
            kinds.append(_KINDS[kind])
        return kinds

    async def _query_vector(self, request: memory_pb2.SearchRequest) -> np.ndarray:
        query = request.WhichOneof("query")
        if query == "text":
            return (await self._embedder.embed([_text(request.text, "text")], query=True))[0]
        if query == "vector":
            if request.embedding_model != self._embedder.model_id:
                raise InvalidArgument("embedding_model", f"the vector must come from {self._embedder.model_id} "
                                      f"(the model of the stored vectors), not {request.embedding_model or 'unset'!r}")
            values = np.asarray(request.vector.values, dtype=np.float32)
            dimensions = self._store.dimensions
            if values.shape != (dimensions,):
                raise InvalidArgument("vector", f"{dimensions} values from {self._embedder.model_id} are needed, "
                                      f"got {values.shape[0]}")
            return values
        raise InvalidArgument("query", "give a text or a vector")


def _user_id(user_id: str, required: str = "") -> str:
    """A user id as the collections hold it; ``required`` says why when it may not be empty."""
    if required and not user_id:
        raise InvalidArgument("user_id", required)
    return _at_most(user_id, "user_id", USER_ID_BYTES)


def _at_most(value: str, field: str, limit: int) -> str:
    if len(value.encode()) > limit:
        raise InvalidArgument(field, f"at most {limit} bytes")
    return value


def _texts(texts: list[str], field: str) -> list[str]:
    if not 1 <= len(texts) <= MAX_TEXTS:
        raise InvalidArgument(field, f"between 1 and {MAX_TEXTS} texts, got {len(texts)}")
    return [_text(text, f"{field}[{index}]") for index, text in enumerate(texts)]


def _cache_question(request: memory_pb2.LookupAnswerRequest | memory_pb2.StoreAnswerRequest) -> str:
    """The question of a response-cache call, once its context digest is checked."""
    if not _CONTEXT.fullmatch(request.context):
        raise InvalidArgument("context", "the context's sha256 digest: 64 lowercase hex characters")
    return _text(request.question, "question")


def _text(text: str, field: str) -> str:
    if not text.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(text) > MAX_TEXT_CHARS:
        # Refused, not chunked: a message or fact is one unit; documents go through UpsertDocument.
        raise InvalidArgument(field, f"at most {MAX_TEXT_CHARS:,} characters, got {len(text):,}")
    return text


def _history_entry(change: dict[str, Any]) -> memory_pb2.FactHistoryEntry:
    at = Timestamp()
    at.FromDatetime(change["at"])
    return memory_pb2.FactHistoryEntry(
        action=_ACTIONS[change["action"]], text=change["text"], previous_text=change["previous_text"], at=at,
        session_id=change["session"], source_ids=change["source_ids"],
    )


def _record(record: MemoryRecord) -> memory_pb2.MemoryRecord:
    return memory_pb2.MemoryRecord(
        id=record.id, user_id=record.user, session_id=record.session, kind=_KIND_VALUES[record.kind],
        text=record.text, source_ids=record.source_ids, created_at=from_milliseconds(record.created_at_ms),
        embedding_model=record.model,
    )
