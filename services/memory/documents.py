"""Documents for knowledge search: split into overlapping chunks, each stored as a memory of kind
``document_chunk`` whose id is the document's id and the chunk's number, so that storing a document again
replaces its chunks (those beyond the new count are deleted). Splitting is LangChain's recursive splitter:
paragraphs first, then sentences, then words, so a chunk rarely cuts a sentence."""

from __future__ import annotations

import datetime

from langchain_text_splitters import RecursiveCharacterTextSplitter
from pymongo.asynchronous.database import AsyncDatabase

from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.records import MemoryRecord, SearchFilter
from moteur.memory.store import VectorStore
from moteur.runtime.errors import NotFound

EMBED_BATCH = 64


class DocumentStore:
    def __init__(self, db: AsyncDatabase, embedder: BatchingEmbedder, store: VectorStore) -> None:
        self._documents = db["memory_documents"]
        self._embedder = embedder
        self._store = store

    async def upsert(self, tenant: str, user: str, document_id: str, title: str, text: str,
                     chunk_chars: int) -> list[str]:
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_chars, chunk_overlap=chunk_chars // 7)
        chunks = [c for c in splitter.split_text(text) if c.strip()]
        records = [
            MemoryRecord(id=_chunk_id(document_id, n), tenant=tenant, user=user, session="", kind="document_chunk",
                         text=f"{title}\n{chunk}" if title else chunk, model=self._embedder.model_id,
                         source_ids=(document_id,))
            for n, chunk in enumerate(chunks)
        ]
        for start in range(0, len(records), EMBED_BATCH):
            batch = records[start:start + EMBED_BATCH]
            await self._store.upsert(batch, await self._embedder.embed([r.text for r in batch]))
        key = f"{tenant}\x1f{document_id}"
        previous = await self._documents.find_one_and_update(
            {"_id": key},
            {"$set": {"tenant": tenant, "user": user, "document_id": document_id, "title": title,
                      "chunks": len(records), "updated_at": datetime.datetime.now(datetime.UTC)}},
            upsert=True,
        )
        stale = [_chunk_id(document_id, n) for n in range(len(records), (previous or {}).get("chunks", 0))]
        if stale:
            await self._store.delete(SearchFilter(tenant=tenant, ids=stale), must_exist=False)
        return [r.id for r in records]

    async def forget(self, tenant: str, user: str) -> None:
        """A forgotten user's documents: their chunks went with the user's memories, their records go here."""
        await self._documents.delete_many({"tenant": tenant, "user": user})

    async def delete(self, tenant: str, document_id: str, user: str = "") -> int:
        """Delete a document's chunks; with ``user``, only a document of theirs. NOT_FOUND otherwise."""
        query = {"_id": f"{tenant}\x1f{document_id}", **({"user": user} if user else {})}
        document = await self._documents.find_one_and_delete(query)
        if document is None:
            raise NotFound(f"document {document_id!r} not found")
        ids = [_chunk_id(document_id, n) for n in range(document["chunks"])]
        return await self._store.delete(SearchFilter(tenant=tenant, ids=ids), must_exist=False) if ids else 0


def _chunk_id(document_id: str, number: int) -> str:
    return f"{document_id}.{number:05d}"
