"""Re-embedding after a change of embedding model: searches never mix models, a stop loses nothing, an edit
made meanwhile wins, and live requests go before the background batches."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.migration import Reembedding
from moteur.memory.records import MemoryRecord, SearchFilter
from moteur.memory.store import VectorStore

DIMENSIONS = 8


class HashModel:
    """A deterministic stand-in for an embedding model: one vector per (model, text)."""

    dimensions = DIMENSIONS

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.batches: list[tuple[list[str], bool]] = []

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        self.batches.append((list(texts), query))
        await asyncio.sleep(0.01)
        return np.stack([self.vector(t) for t in texts])

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(f"{self.model_id}:{text}".encode(), digest_size=4).digest(), "big")
        vector = np.random.default_rng(seed).standard_normal(DIMENSIONS).astype(np.float32)
        return vector / np.linalg.norm(vector)


def _records(model: str) -> list[MemoryRecord]:
    texts = [("fact", "The user lives in Lyon."), ("message", "user: I live in Lyon."),
             ("message", "assistant: Lyon is lovely."), ("fact", "The user works at Airbus.")]
    return [MemoryRecord(id=f"m{i}", tenant="acme" if i < 3 else "globex", user="ada", session="s", kind=kind,
                         text=text, model=model, created_at_ms=1_000 + i) for i, (kind, text) in enumerate(texts)]


async def _old_store(path: Path) -> VectorStore:
    old = HashModel("old")
    store = VectorStore(str(path), DIMENSIONS)
    await store.open()
    records = _records("old")
    await store.upsert(records, np.stack([old.vector(r.text) for r in records]))
    return store


async def test_vectors_of_the_former_model_are_re_embedded_and_searches_never_mix_models(tmp_path: Path) -> None:
    store = await _old_store(tmp_path / "m.db")
    new = HashModel("new")
    embedder = BatchingEmbedder(new, passage_batch=2)
    migration = Reembedding(store, embedder, batch=2, rest_ratio=0)
    try:
        where = SearchFilter(tenant="acme", model="new")
        query = new.vector("The user lives in Lyon.")
        assert await store.search(query, where, 5, -1) == []  # nothing of the new model yet: no old vector is used
        before = await migration.status("acme")
        assert (before.model, before.current, before.remaining, before.from_models) == ("new", 0, 3, ("old",))

        await migration.run()

        after = await migration.status("acme")
        assert (after.current, after.remaining, after.from_models, after.running) == (3, 0, (), False)
        hits = await store.search(query, where, 5, -1)
        assert hits[0].record.id == "m0" and hits[0].score > 0.99 and {h.record.model for h in hits} == {"new"}
        kinds = {r.id: r.kind for r in await store.get(SearchFilter(tenant="acme"))}
        assert kinds == {"m0": "fact", "m1": "message", "m2": "reply"}  # an old assistant message is filed as a reply
        assert new.batches[0][0] == ["The user lives in Lyon.", "The user works at Airbus."]  # facts first
        assert all(not query for _, query in new.batches)  # stored texts are passages
    finally:
        await embedder.aclose()
        await store.close()


async def test_a_stopped_re_embedding_goes_on_from_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = await _old_store(path)
    embedder = BatchingEmbedder(HashModel("new"))
    first = Reembedding(store, embedder, batch=2, rest_ratio=0)
    assert await first.step() == 2  # then the service stops
    await embedder.aclose()
    await store.close()

    store = VectorStore(str(path), DIMENSIONS)
    await store.open()
    embedder = BatchingEmbedder(HashModel("new"))
    again = Reembedding(store, embedder, batch=2, rest_ratio=0)
    try:
        assert (await again.status("acme")).remaining + (await again.status("globex")).remaining == 2
        await again.run()
        assert [(await again.status(t)).remaining for t in ("acme", "globex")] == [0, 0]
        assert await store.count_made_by_others("new") == 0
    finally:
        await embedder.aclose()
        await store.close()


async def test_an_edit_made_while_a_record_is_re_embedded_wins(tmp_path: Path) -> None:
    store = await _old_store(tmp_path / "m.db")
    try:
        [read] = await store.get(SearchFilter(tenant="acme", ids=["m0"]))
        edited = MemoryRecord(**{**{f: getattr(read, f) for f in read.__slots__}, "text": "The user lives in Paris."})
        await store.upsert([edited], HashModel("old").vector(edited.text)[None, :])
        rewritten = MemoryRecord(**{**{f: getattr(read, f) for f in read.__slots__}, "model": "new"})
        assert await store.replace_vectors([read], [rewritten], HashModel("new").vector(read.text)[None, :]) == 0
        [kept] = await store.get(SearchFilter(tenant="acme", ids=["m0"]))
        assert (kept.text, kept.model) == ("The user lives in Paris.", "old")
    finally:
        await store.close()


async def test_live_requests_go_before_background_batches() -> None:
    model = HashModel("new")
    embedder = BatchingEmbedder(model, max_batch=4, passage_batch=4)
    try:
        background = [asyncio.create_task(embedder.embed([f"old {i}"], background=True)) for i in range(3)]
        live = asyncio.create_task(embedder.embed(["Where do I live?"], query=True))
        await asyncio.gather(*background, live)
        assert model.batches[0] == (["Where do I live?"], True)  # queries and passages never share a batch
        assert model.batches[1] == (["old 0", "old 1", "old 2"], False)
    finally:
        await embedder.aclose()
