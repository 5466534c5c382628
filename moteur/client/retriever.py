"""A LangChain retriever over the gateway's SearchMemories: a user's facts, messages and documents, found by
meaning, as ``Document``s that chains users already write can take."""

from __future__ import annotations

from datetime import UTC
from typing import Any, Self

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, field_validator, model_validator

from moteur.client import AsyncMoteurClient, MoteurClient
from moteur.client.requests import MEMORY_KINDS, memory_kinds
from moteur.v1 import memory_pb2

_KIND_NAMES = {number: name for name, number in MEMORY_KINDS.items()}


class MoteurRetriever(BaseRetriever):
    """Finds the caller's memories nearest a query, best first, through the clients it is given (their owner
    closes them): ``invoke`` uses ``client``, ``ainvoke`` uses ``async_client`` (or ``client`` in a thread
    when only that one is given). The API key decides whose memory is searched: a user key its own user's, a
    service key the ``user_id`` it names. Failed calls raise :class:`MoteurClientError`.

    Each document's ``page_content`` is the memory's text, its ``id`` the memory's id, and its metadata
    holds ``id``, ``score`` (cosine similarity), ``kind``, ``user_id``, ``session_id``, ``created_at`` (ISO
    8601, or None), ``source_ids`` and ``embedding_model``.
    """

    client: MoteurClient | None = None
    async_client: AsyncMoteurClient | None = None
    user_id: str = ""
    """Whose memory a service key searches; empty: the key's own user."""
    kinds: list[str] = Field(default_factory=list)
    """Only these kinds ("fact", "message", "reply", "document_chunk"); empty: every kind."""
    top_k: int = Field(default=5, ge=1, le=100)
    min_score: float = Field(default=0.0, ge=-1.0, le=1.0)
    """Memories less similar than this (cosine similarity) are left out."""

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        memory_kinds(kinds)  # a ValueError naming the kinds there are, at construction rather than at search
        return kinds

    @model_validator(mode="after")
    def _has_a_client(self) -> Self:
        if self.client is None and self.async_client is None:
            raise ValueError("give client=MoteurClient(...), async_client=AsyncMoteurClient(...) or both")
        return self

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self.client is None:  # a blocking call cannot drive the async client's event loop
            raise RuntimeError("this MoteurRetriever has only an async_client: use ainvoke, or give it client=")
        found = self.client.search_memories(query, **self._search_options())
        return [memory_document(hit) for hit in found.hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self.async_client is None:
            return await super()._aget_relevant_documents(query, run_manager=run_manager)  # the sync one, threaded
        found = await self.async_client.search_memories(query, **self._search_options())
        return [memory_document(hit) for hit in found.hits]

    def _search_options(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "kinds": self.kinds, "top_k": self.top_k, "min_score": self.min_score}


def memory_document(hit: memory_pb2.SearchHit) -> Document:
    """One search hit as a LangChain document; metadata values are plain JSON types, so it serialises."""
    record = hit.record
    return Document(page_content=record.text, id=record.id, metadata={
        "id": record.id,
        "score": hit.score,
        "kind": _KIND_NAMES.get(record.kind, str(record.kind)),
        "user_id": record.user_id,
        "session_id": record.session_id,
        "created_at": record.created_at.ToDatetime(tzinfo=UTC).isoformat() if record.HasField("created_at") else None,
        "source_ids": list(record.source_ids),
        "embedding_model": record.embedding_model,
    })
