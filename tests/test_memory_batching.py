"""The embedder's batches form while the model runs: an idle lane runs a lone question at once (no wait for
company, which cost every question 2 ms), and the callers that came meanwhile share the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from moteur.memory.embeddings import BatchingEmbedder


class HeldModel:
    """Records its batches and holds each one until the test releases it."""

    model_id = "m"
    dimensions = 4

    def __init__(self) -> None:
        self.batches: list[tuple[int, bool]] = []
        self.release = asyncio.Event()

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        self.batches.append((len(texts), query))
        await self.release.wait()
        return np.ones((len(texts), self.dimensions), dtype=np.float32) / 2


async def _ticks(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_an_idle_lane_runs_at_once_and_later_callers_share_the_next_batch() -> None:
    queries = HeldModel()
    embedder = BatchingEmbedder(HeldModel(), query_model=queries)
    try:
        first = asyncio.create_task(embedder.embed(["Where do I live?"], query=True))
        await _ticks(5)
        assert queries.batches == [(1, True)]  # started within a few loop turns, not after a timer
        later = []
        for i in range(3):  # each on a turn of its own, as gRPC requests come
            later.append(asyncio.create_task(embedder.embed([f"Where is my car {i}?"], query=True)))
            await _ticks(1)
        queries.release.set()
        vectors = await asyncio.gather(first, *later)
        assert [len(v) for v in vectors] == [1, 1, 1, 1]
        assert queries.batches == [(1, True), (3, True)]
    finally:
        await embedder.aclose()
