"""Re-embedding, in the background, the vectors a former embedding model made.

Every vector records the model that made it, and a search compares only vectors of the current model; so
when the default model changes, the vectors of the former one are left out of searches until they are
re-embedded. This task finds them (facts first: recall needs them most), embeds their stored text again as
background work (the embedder serves every live request before it), and writes each one back under its id
only if the record is still the one read: an edit or a deletion made meanwhile wins. A chat reply stored as
a message before replies had their own kind is filed as a reply on the way.

Invariant: the stored records are the progress. Nothing else is kept, so a stop loses nothing and the next
start goes on with what is left; two replicas doing it at once write the same vectors twice, no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass

import structlog

from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.metrics import REEMBED_REMAINING, REEMBEDDED
from moteur.memory.records import MemoryRecord
from moteur.memory.store import VectorStore
from moteur.runtime.tasks import cancel_and_wait

log = structlog.get_logger("moteur.memory.migration")


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    model: str
    current: int
    remaining: int
    from_models: tuple[str, ...]
    running: bool


class Reembedding:
    def __init__(self, store: VectorStore, embedder: BatchingEmbedder, batch: int = 8,
                 rest_ratio: float = 1.0, retry_seconds: float = 5.0) -> None:
        self._store = store
        self._embedder = embedder
        self._batch = batch
        self._rest_ratio = rest_ratio  # after a batch, rest this share of the time it took: live work goes first
        self._retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._unwritten: set[str] = set()  # ids read and left as they were by the last batch
        self.running = False

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="memory-reembedding")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.running = False

    async def status(self, tenant: str) -> MigrationStatus:
        model = self._embedder.model_id
        counts = await self._store.models(tenant)
        others = sorted(m for m in counts if m != model)
        return MigrationStatus(model, counts.get(model, 0), sum(counts[m] for m in others), tuple(others),
                               self.running)

    async def run(self) -> None:
        """Re-embed until no vector of a former model is left; a failure (the store down) is retried."""
        self.running = True
        done = 0
        with contextlib.suppress(Exception):
            REEMBED_REMAINING.set(await self._store.count_made_by_others(self._embedder.model_id))
        try:
            while True:
                try:
                    written = await self.step()
                except Exception as exc:  # the store or the model failed: what is left stays, tried again later
                    log.warning("reembedding.failed", error=str(exc)[:300], retry_in_s=self._retry_seconds)
                    await asyncio.sleep(self._retry_seconds)
                    continue
                if written is None:
                    break
                done += written
        finally:
            self.running = False
        if done:
            log.info("reembedding.done", model=self._embedder.model_id, reembedded=done)

    async def step(self) -> int | None:
        """Re-embed one batch; how many vectors were written, or None when nothing is left."""
        model = self._embedder.model_id
        found = await self._store.made_by_others(model, self._batch)
        if not found:
            REEMBED_REMAINING.set(0)
            return None
        started = time.monotonic()
        vectors = await self._embedder.embed([r.text for r in found], background=True)
        now = [_refiled(dataclasses.replace(r, model=model)) for r in found]
        written = await self._store.replace_vectors(found, now, vectors)
        REEMBEDDED.inc(written)
        ids = {r.id for r in found}
        if not written and ids == self._unwritten:  # changed under us twice in a row: not a race, a mismatch
            raise RuntimeError(f"records {sorted(ids)[:5]} read for re-embedding differ from what the store holds")
        self._unwritten = ids if not written else set()
        with contextlib.suppress(Exception):
            REEMBED_REMAINING.set(await self._store.count_made_by_others(model))
        await asyncio.sleep((time.monotonic() - started) * self._rest_ratio)
        return written


def _refiled(record: MemoryRecord) -> MemoryRecord:
    """An assistant's answer, stored as a message before replies had their own kind, becomes a reply."""
    if record.kind == "message" and record.text.startswith("assistant: "):
        return dataclasses.replace(record, kind="reply")
    return record
