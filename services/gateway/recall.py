"""Recall: what the memory service remembers of this user that bears on the question, for the prompt.

One ``Memory.Search`` per turn (facts and past messages of the user, nearest first), run beside the
session read. What the session's own history already holds is left out; the rest goes into one system
message, marked as memory, until the token budget is spent. Recall is a refinement: when memory is slow
or down the turn goes on without it and says so (``memory: unavailable`` in the route metadata).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import grpc
import structlog

from moteur.gateway.metrics import RECALLS
from moteur.runtime.channels import mesh_metadata
from moteur.runtime.identity import Identity
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.v1 import memory_pb2, memory_pb2_grpc

log = structlog.get_logger("moteur.gateway.recall")


@dataclass(frozen=True, slots=True)
class Recalled:
    memory_id: str
    kind: str  # "fact" or "message"
    text: str
    score: float
    source_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Recollection:
    status: str  # "on", "off", "unavailable"
    memories: tuple[Recalled, ...] = ()

    def prompt(self) -> str:
        """The system message that carries the memories; empty when there are none."""
        if not self.memories:
            return ""
        lines = [f"- ({m.kind}) {m.text}" for m in self.memories]
        return ("Memory: what you know about this user from earlier conversations. Use it only where it "
                "helps with the question.\n" + "\n".join(lines))


OFF = Recollection("off")


class Recall:
    def __init__(self, memory: memory_pb2_grpc.MemoryStub, top_k: int = 8, min_score: float = 0.35,
                 token_budget: int = 256, timeout_seconds: float = 1.0) -> None:
        self._memory = memory
        self._top_k = top_k
        self._min_score = min_score
        self._token_budget = token_budget
        self._timeout = timeout_seconds

    async def search(self, identity: Identity, user: str, question: str) -> Recollection:
        request = memory_pb2.SearchRequest(
            text=question[:MAX_TEXT_CHARS], user_id=user, top_k=self._top_k, min_score=self._min_score,
            kinds=[memory_pb2.MEMORY_KIND_FACT, memory_pb2.MEMORY_KIND_MESSAGE],
        )
        try:
            found = await self._memory.Search(request, metadata=mesh_metadata(identity), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            RECALLS.labels("unavailable").inc()
            log.warning("recall.unavailable", code=exc.code().name, error=(exc.details() or "")[:200])
            return Recollection("unavailable")
        memories = tuple(
            Recalled(h.record.id, memory_pb2.MemoryKind.Name(h.record.kind).removeprefix("MEMORY_KIND_").lower(),
                     h.record.text, h.score, tuple(h.record.source_ids))
            for h in found.hits
        )
        RECALLS.labels("on").inc()
        return Recollection("on", memories)

    def fit(self, recollection: Recollection, in_history: Collection[str]) -> Recollection:
        """Drop what the history already shows, then keep the nearest memories within the token budget."""
        kept, spent = [], 0
        for memory in recollection.memories:
            if memory.memory_id in in_history or any(s in in_history for s in memory.source_ids):
                continue
            cost = (len(memory.text) + 3) // 4 + 4
            if spent + cost > self._token_budget:
                break
            kept.append(memory)
            spent += cost
        return Recollection(recollection.status, tuple(kept))
