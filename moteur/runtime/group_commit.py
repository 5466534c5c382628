"""Group commit: the writes of concurrent turns share one MongoDB ``bulkWrite``, and so one journal sync.

A turn's writes (its messages, its session, its usage, its outbox entries) go in one round trip
(:func:`moteur.runtime.mongo.write_together`). Under load the store's cost is dominated by the journal sync
each round trip commits, so while one bulk write is in flight the writes of the turns that arrive behind it
wait in a queue, and the next bulk write carries all of them: N turns, one sync.

Each turn's writes keep their order (the messages before the records that point at them) because the bulk
write is ordered. Ordered also means a failing write stops those after it: the turn it belongs to fails with
that error, the turns before it are written, and the turns after it are sent again in the next bulk write —
safe, because every write of a turn is idempotent (``insert_once``, guarded updates). A turn whose caller went
away is still written: its writes are queued already, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from opentelemetry import trace
from prometheus_client import Histogram
from pymongo import AsyncMongoClient
from pymongo.errors import ClientBulkWriteException

from moteur.runtime.mongo import ClientWrite, write_together

GROUP_COMMIT_TURNS = Histogram(
    "moteur_store_group_commit_writers", "How many writers (turns) one bulk write carried",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GROUP_COMMIT_SECONDS = Histogram(
    "moteur_store_group_commit_seconds", "How long one grouped bulk write took",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_tracer = trace.get_tracer("moteur.runtime.group_commit")


@dataclass(slots=True)
class _Writer:
    writes: Sequence[ClientWrite]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def __post_init__(self) -> None:
        # A writer whose caller went away never reads its outcome: asyncio must not log it as lost.
        self.done.add_done_callback(lambda done: done.cancelled() or done.exception())


class GroupCommit:
    """One per process and client: :meth:`write` returns once the writes are committed (or raises)."""

    def __init__(self, client: AsyncMongoClient, max_writers: int = 64, max_writes: int = 2_000) -> None:
        """``max_writers`` bounds the turns one bulk write carries (1: no grouping); ``max_writes`` its writes."""
        self._client = client
        self._max_writers = max_writers
        self._max_writes = max_writes
        self._waiting: list[_Writer] = []
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, writes: Sequence[ClientWrite]) -> None:
        if not writes:
            return
        writer = _Writer(writes)
        self._waiting.append(writer)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush(), name="mongo-group-commit")
        # Shielded: a caller that goes away does not take its writes out of a batch in flight.
        await asyncio.shield(writer.done)

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                await self._send(batch)
        finally:
            self._flushing = None
            if self._waiting:  # arrived while the last send was failing out
                self._flushing = asyncio.create_task(self._flush(), name="mongo-group-commit")

    def _take(self) -> list[_Writer]:
        batch: list[_Writer] = []
        count = 0
        while self._waiting and len(batch) < self._max_writers and (
                not batch or count + len(self._waiting[0].writes) <= self._max_writes):
            writer = self._waiting.pop(0)
            batch.append(writer)
            count += len(writer.writes)
        return batch

    async def _send(self, batch: list[_Writer]) -> None:
        writes = [w for writer in batch for w in writer.writes]
        GROUP_COMMIT_TURNS.observe(len(batch))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with _tracer.start_as_current_span("store.group_commit", attributes={
                "moteur.writers": len(batch), "moteur.writes": len(writes)}):
            try:
                await write_together(self._client, writes)
            except ClientBulkWriteException as exc:
                self._settle_partly(batch, exc)
                return
            except Exception as exc:  # nothing is known to be written: every writer learns why
                for writer in batch:
                    _fail(writer, exc)
                return
            except BaseException:  # cancelled (shutdown): no writer may wait for ever
                for writer in batch:
                    _fail(writer, ConnectionAbortedError("shutting down"))
                raise
            finally:
                GROUP_COMMIT_SECONDS.observe(loop.time() - started)
        for writer in batch:
            _succeed(writer)

    def _settle_partly(self, batch: list[_Writer], exc: ClientBulkWriteException) -> None:
        """An ordered bulk write stopped at its first failing write: those before it landed, the writer of the
        failing one fails, and the writers after it go back to the front of the queue."""
        # Each entry is the server's error document (PyMongo types it as WriteError).
        errors = cast(list[Mapping[str, Any]], exc.write_errors or [])
        failed_at = min((int(error["idx"]) for error in errors), default=None)
        if failed_at is None or exc.write_concern_errors:  # not one write's fault: the whole batch fails
            for writer in batch:
                _fail(writer, exc)
            return
        start = 0
        for position, writer in enumerate(batch):
            end = start + len(writer.writes)
            if end <= failed_at:
                _succeed(writer)
            elif start <= failed_at:
                _fail(writer, exc)
            else:
                self._waiting[:0] = batch[position:]
                return
            start = end


def _succeed(writer: _Writer) -> None:
    if not writer.done.done():
        writer.done.set_result(None)


def _fail(writer: _Writer, exc: BaseException) -> None:
    if not writer.done.done():
        writer.done.set_exception(exc)
