"""The embedder's lanes: a question is embedded beside stored texts, never behind them, and stored texts are
batched; with one model for both, questions still go first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from moteur.memory.embeddings import BatchingEmbedder


class TimedModel:
    """Takes ``seconds_per_text`` per text, one call at a time, and records its batches."""

    dimensions = 4

    def __init__(self, seconds_per_text: float, model_id: str = "m") -> None:
        self.model_id = model_id
        self.seconds_per_text = seconds_per_text
        self.batches: list[tuple[int, bool]] = []
        self._busy = asyncio.Lock()

    async def embed_batch(self, texts: Sequence[str], query: bool = False) -> np.ndarray:
        async with self._busy:
            self.batches.append((len(texts), query))
            await asyncio.sleep(self.seconds_per_text * len(texts))
            return np.ones((len(texts), self.dimensions), dtype=np.float32) / 2


async def _question_latency(embedder: BatchingEmbedder) -> tuple[float, asyncio.Task[np.ndarray]]:
    stored = asyncio.create_task(embedder.embed([f"passage {i}" for i in range(20)]))
    await asyncio.sleep(0.02)  # the passages are being embedded
    started = time.perf_counter()
    await embedder.embed(["Where do I live?"], query=True)
    return time.perf_counter() - started, stored


async def test_a_question_has_its_own_lane_and_passages_are_batched() -> None:
    passages, queries = TimedModel(0.02), TimedModel(0.02)
    embedder = BatchingEmbedder(passages, query_model=queries)
    try:
        waited, stored = await _question_latency(embedder)
        assert not stored.done()  # the 20 passages (0.4 s) were still running when the question was answered
        assert waited < 0.2
        await stored
        assert passages.batches == [(20, False)] and queries.batches == [(1, True)]
    finally:
        await embedder.aclose()


async def test_with_one_model_a_question_waits_for_one_passage_at_most() -> None:
    model = TimedModel(0.02)
    embedder = BatchingEmbedder(model)
    try:
        waited, stored = await _question_latency(embedder)
        assert waited < 0.2 and not stored.done()
        await stored
        assert model.batches[0] == (1, False) and (1, True) in model.batches[:3]
    finally:
        await embedder.aclose()


def test_the_lanes_must_run_the_same_model() -> None:
    with pytest.raises(ValueError, match="cannot mix"):
        BatchingEmbedder(TimedModel(0, "a"), query_model=TimedModel(0, "b"))


async def test_long_texts_make_short_batches() -> None:
    model = TimedModel(0.0)
    embedder = BatchingEmbedder(model, query_model=TimedModel(0.0), max_batch_chars=1000)
    try:
        long, short = ["x" * 600] * 3, [f"short {i}" for i in range(5)]
        vectors = await asyncio.gather(embedder.embed(long), embedder.embed(short))
        assert [len(v) for v in vectors] == [3, 5]
        # One long text a batch (two would pass 1,000 characters); the short ones join the last.
        assert model.batches == [(1, False), (1, False), (6, False)]
    finally:
        await embedder.aclose()
