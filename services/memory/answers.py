"""The semantic response cache: answers kept per tenant and context, found again by their question's embedding.

The gateway decides what may be cached and digests the context an answer depends on (model or route, system
prompt, recalled memories, tools, short history, registry revision) into ``context``; memory only keeps
answers under that digest and finds the ones whose question lies nearest a new one. An entry lives until its
TTL; expired entries are never returned and are swept every ``sweep_seconds``.

Entries are a second Milvus collection beside the memories, the tenant as its partition key, on the vector
store's one client and thread. As for memories, a Lite file is searched through an in-process mirror (one
small matrix per tenant and context, at most ``max_per_context`` entries and ``max_per_tenant`` in all, the
tenant's oldest dropped first: a tenant that keeps many answers only ever pushes out its own), a cluster by
Milvus itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import structlog
from pymilvus import DataType, MilvusClient

from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.metrics import ANSWER_CACHE_ENTRIES
from moteur.memory.store import VectorStore
from moteur.runtime.ids import new_id
from moteur.runtime.tasks import cancel_and_wait

log = structlog.get_logger("moteur.memory.answers")

COLLECTION = "moteur_answer_cache"
_FIELDS = ["id", "tenant", "context", "user", "model", "question", "answer", "created_at", "expires_at"]


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    id: str
    tenant: str
    context: str
    user: str
    model: str  # the embedding model that made its vector
    question: str
    answer: str
    created_at_ms: int
    expires_at_ms: int

    def to_row(self, vector: np.ndarray) -> dict[str, object]:
        return {"id": self.id, "vector": vector.tolist(), "tenant": self.tenant, "context": self.context,
                "user": self.user, "model": self.model, "question": self.question, "answer": self.answer,
                "created_at": self.created_at_ms, "expires_at": self.expires_at_ms}

    @classmethod
    def from_row(cls, row: dict[str, object]) -> CachedAnswer:
        return cls(*(row[name] for name in _FIELDS))  # type: ignore[arg-type]  # the collection's own columns


@dataclass(slots=True)
class _Shelf:
    """One tenant's answers in one context: a small matrix, searched exactly."""

    entries: list[CachedAnswer] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    _matrix: np.ndarray | None = None

    def put(self, entry: CachedAnswer, vector: np.ndarray, cap: int) -> list[str]:
        """Keep ``entry``; the ids of the oldest ones dropped to stay within ``cap``."""
        self.entries.append(entry)
        self.vectors.append(np.asarray(vector, dtype=np.float32))
        dropped = [e.id for e in self.entries[:-cap]] if len(self.entries) > cap else []
        if dropped:
            self.entries, self.vectors = self.entries[-cap:], self.vectors[-cap:]
        self._matrix = None
        return dropped

    def pop_oldest(self) -> str:
        self._matrix = None
        self.vectors.pop(0)
        return self.entries.pop(0).id

    def drop(self, keep: Iterable[bool]) -> int:
        kept = [(e, v) for (e, v), k in zip(zip(self.entries, self.vectors, strict=True), keep, strict=True) if k]
        gone = len(self.entries) - len(kept)
        if gone:
            self.entries, self.vectors = [e for e, _ in kept], [v for _, v in kept]
            self._matrix = None
        return gone

    def nearest(self, vector: np.ndarray, model: str, now_ms: int, top_k: int,
                min_score: float) -> list[tuple[CachedAnswer, float]]:
        if not self.entries:
            return []
        if self._matrix is None:
            self._matrix = np.stack(self.vectors)
        scores = self._matrix @ vector  # normalised vectors: the dot product is the cosine
        order = np.argsort(-scores)
        found: list[tuple[CachedAnswer, float]] = []
        for i in order:
            entry, score = self.entries[i], float(scores[i])
            if score < min_score or len(found) == top_k:
                break
            if entry.expires_at_ms > now_ms and entry.model == model:
                found.append((entry, score))
        return found


class AnswerCache:
    def __init__(self, store: VectorStore, embedder: BatchingEmbedder, max_per_context: int = 512,
                 max_per_tenant: int = 10_000, sweep_seconds: float = 60.0) -> None:
        self._store = store
        self._embedder = embedder
        self._cap = max_per_context
        self._tenant_cap = max_per_tenant
        self._sweep_seconds = sweep_seconds
        # tenant → context → its answers
        self._mirror: dict[str, dict[str, _Shelf]] | None = {} if store.mirror is not None else None
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._store.run(self._open)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="answer-cache-sweep")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)

    def _open(self) -> None:
        client = self._store.client
        if not client.has_collection(COLLECTION):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._store.dimensions)
            schema.add_field("tenant", DataType.VARCHAR, max_length=128, is_partition_key=True)
            schema.add_field("context", DataType.VARCHAR, max_length=64)
            schema.add_field("user", DataType.VARCHAR, max_length=128)
            schema.add_field("model", DataType.VARCHAR, max_length=128)
            schema.add_field("question", DataType.VARCHAR, max_length=65535)
            schema.add_field("answer", DataType.VARCHAR, max_length=65535)
            schema.add_field("created_at", DataType.INT64)
            schema.add_field("expires_at", DataType.INT64)
            index = client.prepare_index_params()
            index.add_index("vector", index_type="FLAT", metric_type="COSINE")
            client.create_collection(COLLECTION, schema=schema, index_params=index)
        client.load_collection(COLLECTION)
        if self._mirror is not None:
            now, page = _now_ms(), 10_000
            rows: list[dict[str, object]] = []
            while True:
                found = client.query(COLLECTION, filter=f"expires_at > {now}", output_fields=[*_FIELDS, "vector"],
                                     limit=page, offset=len(rows))
                rows += found
                if len(found) < page:
                    break
            for row in sorted(rows, key=lambda r: int(r["created_at"])):  # type: ignore[call-overload]
                self._keep(CachedAnswer.from_row(row), np.asarray(row["vector"], dtype=np.float32))
            self._count()

    def _keep(self, entry: CachedAnswer, vector: np.ndarray) -> list[str]:
        """Put ``entry`` in the mirror; the ids of the tenant's oldest answers dropped to stay within the caps."""
        assert self._mirror is not None
        shelves = self._mirror.setdefault(entry.tenant, {})
        dropped = shelves.setdefault(entry.context, _Shelf()).put(entry, vector, self._cap)
        while sum(len(shelf.entries) for shelf in shelves.values()) > self._tenant_cap:
            context, oldest = min(((c, s) for c, s in shelves.items() if s.entries),
                                  key=lambda pair: pair[1].entries[0].created_at_ms)
            dropped.append(oldest.pop_oldest())
            if not oldest.entries:
                del shelves[context]
        return dropped

    async def lookup(self, tenant: str, context: str, question: str, min_score: float,
                     top_k: int) -> list[tuple[CachedAnswer, float]]:
        """The live answers of this tenant and context whose question lies within ``min_score``, nearest first."""
        vector = (await self._embedder.embed([question], query=True))[0]
        model, now = self._embedder.model_id, _now_ms()
        if self._mirror is not None:
            shelf = self._mirror.get(tenant, {}).get(context)
            return [] if shelf is None else shelf.nearest(vector, model, now, top_k, min_score)
        where = (f"tenant == {json.dumps(tenant)} and context == {json.dumps(context)} and "
                 f"model == {json.dumps(model)} and expires_at > {now}")
        results = await self._store.run(
            self._store.client.search, COLLECTION, [vector.tolist()], limit=top_k, filter=where,
            output_fields=_FIELDS, search_params={"metric_type": "COSINE"})
        found = [(CachedAnswer.from_row(r["entity"]), float(r["distance"])) for r in results[0]]
        return [(entry, score) for entry, score in found if score >= min_score]

    async def store(self, tenant: str, context: str, user: str, question: str, answer: str,
                    ttl_seconds: int) -> CachedAnswer:
        # Embedded as a query, as lookups are: two questions are compared, not a question and a passage.
        vector = (await self._embedder.embed([question], query=True))[0]
        now = _now_ms()
        entry = CachedAnswer(new_id(), tenant, context, user, self._embedder.model_id, question, answer, now,
                             now + ttl_seconds * 1000)
        await self._store.run(self._store.client.upsert, COLLECTION, [entry.to_row(vector)])
        if self._mirror is not None:
            dropped = self._keep(entry, vector)
            if dropped:
                await self._store.run(self._store.client.delete, COLLECTION, ids=dropped)
            self._count()
        return entry

    async def clear(self, tenant: str, user: str = "") -> int:
        """Drop the tenant's answers (only those of ``user``'s questions, when given); how many there were."""
        where = f"tenant == {json.dumps(tenant)}" + (f" and user == {json.dumps(user)}" if user else "")
        return await self._delete(where, lambda e: e.tenant == tenant and (not user or e.user == user))

    async def sweep(self) -> int:
        """Drop every expired answer; how many there were."""
        now = _now_ms()
        return await self._delete(f"expires_at <= {now}", lambda e: e.expires_at_ms <= now)

    async def _delete(self, where: str, matches: Callable[[CachedAnswer], bool]) -> int:
        rows = await self._store.run(self._store.client.query, COLLECTION, filter=where, output_fields=["id"],
                                     limit=16_384)
        ids = [r["id"] for r in rows]
        if ids:
            await self._store.run(self._store.client.delete, COLLECTION, ids=ids)
        if self._mirror is not None:
            for tenant, shelves in list(self._mirror.items()):
                for context, shelf in list(shelves.items()):
                    shelf.drop(not matches(e) for e in shelf.entries)
                    if not shelf.entries:
                        del shelves[context]
                if not shelves:
                    del self._mirror[tenant]
            self._count()
        return len(ids)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                swept = await self.sweep()
            except Exception:
                log.exception("answer_cache.sweep_failed")
                continue
            if swept:
                log.info("answer_cache.swept", expired=swept)

    def _count(self) -> None:
        if self._mirror is not None:
            ANSWER_CACHE_ENTRIES.set(sum(len(s.entries) for shelves in self._mirror.values()
                                         for s in shelves.values()))


def _now_ms() -> int:
    return int(time.time() * 1000)
