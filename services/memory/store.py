"""The vector store: one Milvus collection of memories, the tenant as its partition key.

One URI setting chooses the deployment: a file path is Milvus Lite (embedded, one machine), an
``http://`` address a Milvus cluster. Every query carries the tenant (and the embedding model) in its
filter, so a tenant only ever searches its own partition, and vectors of another model are never
compared. pymilvus is synchronous: calls run on one worker thread, in order, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from moteur.memory.exact import ExactIndex
from moteur.memory.records import Hit, Kind, MemoryRecord, SearchFilter
from moteur.runtime.errors import NotFound

__all__ = ["Hit", "Kind", "MemoryRecord", "SearchFilter", "VectorStore"]

COLLECTION = "moteur_memories"
_FIELDS = ["id", "tenant", "user", "session", "kind", "text", "created_at", "source_ids", "model"]


class VectorStore:
    def __init__(self, uri: str, dimensions: int, index_type: str = "FLAT", index_params: dict[str, Any] | None = None,
                 search_params: dict[str, Any] | None = None, exact_mirror: bool | None = None) -> None:
        self.uri = uri
        # The embedded Lite engine searches slowly: by default a Lite file is searched through an exact mirror.
        embedded = not uri.startswith(("http://", "https://", "tcp://"))
        self.mirror = ExactIndex(dimensions) if (embedded if exact_mirror is None else exact_mirror) else None
        self.dimensions = dimensions
        self._index = (index_type, index_params or {})
        self._search_params = search_params or {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        self._client: MilvusClient | None = None

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        client = MilvusClient(self.uri)
        if not client.has_collection(COLLECTION):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimensions)
            schema.add_field("tenant", DataType.VARCHAR, max_length=128, is_partition_key=True)
            schema.add_field("user", DataType.VARCHAR, max_length=128)
            schema.add_field("session", DataType.VARCHAR, max_length=64)
            schema.add_field("kind", DataType.VARCHAR, max_length=16)
            schema.add_field("text", DataType.VARCHAR, max_length=65535)
            schema.add_field("created_at", DataType.INT64)
            schema.add_field("source_ids", DataType.VARCHAR, max_length=4096)
            schema.add_field("model", DataType.VARCHAR, max_length=128)
            index = client.prepare_index_params()
            index_type, params = self._index
            index.add_index("vector", index_type=index_type, metric_type="COSINE", params=params)
            client.create_collection(COLLECTION, schema=schema, index_params=index)
        # A Lite collection comes back released after a restart: load it before the first search.
        client.load_collection(COLLECTION)
        self._client = client
        if self.mirror is not None:
            self._fill_mirror(client)

    def _fill_mirror(self, client: MilvusClient, page: int = 10_000) -> None:
        offset = 0
        while True:
            rows = client.query(COLLECTION, filter='id != ""', output_fields=[*_FIELDS, "vector"], limit=page,
                                offset=offset)
            if rows:
                assert self.mirror is not None
                self.mirror.put([MemoryRecord.from_row(r) for r in rows],
                                np.asarray([r["vector"] for r in rows], dtype=np.float32))
            if len(rows) < page:
                return
            offset += page

    async def close(self) -> None:
        if self._client is not None:
            await self.run(self._client.close)
        self._thread.shutdown(wait=False)

    @property
    def client(self) -> MilvusClient:
        assert self._client is not None, "VectorStore.open() first"
        return self._client

    async def upsert(self, records: Sequence[MemoryRecord], vectors: np.ndarray) -> None:
        rows = [record.to_row(vector) for record, vector in zip(records, vectors, strict=True)]
        await self.run(self.client.upsert, COLLECTION, rows)
        if self.mirror is not None:
            self.mirror.put(records, np.asarray(vectors, dtype=np.float32))

    async def search(self, vector: np.ndarray, where: SearchFilter, top_k: int, min_score: float) -> list[Hit]:
        if self.mirror is not None:
            return self.mirror.search(np.asarray(vector, dtype=np.float32), where, top_k, min_score)
        results = await self.run(
            self.client.search, COLLECTION, [vector.tolist()], limit=top_k, filter=where.expression(),
            output_fields=_FIELDS, search_params={"metric_type": "COSINE", "params": self._search_params},
        )
        hits = [Hit(MemoryRecord.from_row(r["entity"]), float(r["distance"])) for r in results[0]]
        return [h for h in hits if h.score >= min_score]

    async def models(self, tenant: str) -> Counter[str]:
        """How many of the tenant's vectors each embedding model made."""
        if self.mirror is not None:
            return self.mirror.models(tenant)
        rows = await self.run(self.client.query, COLLECTION, filter=SearchFilter(tenant=tenant).expression(),
                               output_fields=["model"], limit=16_384)
        return Counter(r["model"] for r in rows)

    async def count_made_by_others(self, model: str) -> int:
        """How many vectors, of every tenant, another model than ``model`` made."""
        if self.mirror is not None:
            return self.mirror.count_made_by_others(model)
        rows = await self.run(self.client.query, COLLECTION, filter=f"model != {json.dumps(model)}",
                               output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    async def made_by_others(self, model: str, limit: int) -> list[MemoryRecord]:
        """Up to ``limit`` records, of any tenant, whose vectors another model than ``model`` made; facts
        first (what recall needs most), then messages, replies and document chunks."""
        found: list[MemoryRecord] = []
        groups: tuple[list[Kind], ...] = (["fact"], ["message", "reply", "document_chunk"])
        for kinds in groups:
            wanted = limit - len(found)
            if wanted <= 0:
                break
            if self.mirror is not None:
                found += self.mirror.made_by_others(model, kinds, wanted)
                continue
            expression = f"model != {json.dumps(model)} and kind in {json.dumps(kinds)}"
            rows = await self.run(self.client.query, COLLECTION, filter=expression, output_fields=_FIELDS,
                                   limit=wanted)
            found += [MemoryRecord.from_row(r) for r in rows]
        return found

    async def replace_vectors(self, was: Sequence[MemoryRecord], now: Sequence[MemoryRecord],
                              vectors: np.ndarray) -> int:
        """Write ``now[i]`` with ``vectors[i]`` where the stored record is still exactly ``was[i]``: one edited,
        deleted or rewritten since it was read is left as it is. Returns how many were written. The check
        and the write run together on the store's one thread, so no other write of this store comes between."""
        def check_and_write() -> list[int]:
            ids = [r.id for r in was]
            rows = self.client.query(COLLECTION, filter=f"id in {json.dumps(ids)}", output_fields=_FIELDS,
                                     limit=len(ids))
            stored = {r["id"]: MemoryRecord.from_row(r) for r in rows}
            keep = [i for i, record in enumerate(was) if stored.get(record.id) == record]
            if keep:
                self.client.upsert(COLLECTION, [now[i].to_row(vectors[i]) for i in keep])
            return keep

        kept = await self.run(check_and_write)
        if kept and self.mirror is not None:
            self.mirror.put([now[i] for i in kept], np.asarray(vectors, dtype=np.float32)[kept])
        return len(kept)

    async def get(self, where: SearchFilter, limit: int = 1000) -> list[MemoryRecord]:
        if self.mirror is not None:  # the mirror holds every record: no round trip to the Lite engine
            return self.mirror.matching(where, limit)
        rows = await self.run(self.client.query, COLLECTION, filter=where.expression(), output_fields=_FIELDS,
                               limit=limit)
        return [MemoryRecord.from_row(r) for r in rows]

    async def delete(self, where: SearchFilter, must_exist: bool = True) -> int:
        """Delete what matches; explicit ids must all exist in the tenant (else NOT_FOUND, nothing deleted)
        unless ``must_exist`` is false."""
        found = await self.get(where, limit=16_384)
        if where.ids and must_exist:
            missing = sorted(set(where.ids) - {r.id for r in found})
            if missing:
                raise NotFound(f"memories not found: {', '.join(missing[:10])}")
        if not found:
            return 0
        await self.run(self.client.delete, COLLECTION, ids=[r.id for r in found])
        if self.mirror is not None:
            self.mirror.drop(where.tenant, [r.id for r in found])
        return len(found)
