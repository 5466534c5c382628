"""Recall: what the memory service remembers of this user that bears on the question, for the prompt.

One ``Memory.Search`` per turn (the user's facts and own past messages, nearest first — never the
assistant's past answers unless ``kinds`` asks for replies: an old wrong answer recalled is repeated), run
beside the session read. Memories are ranked by their cosine, lifted for facts and for words shared with the
question, and kept from ``min_score`` up, at most ``margin`` below the best one (all calibrated on
``evals/recall.yaml``, see ``python -m bench memory``). What the session's own history already holds is left
out; the rest goes into one system message, marked as memory, until the token budget is spent. Recall is a
refinement: when memory is slow or down the turn goes on without it and says so (``memory: unavailable`` in
the route metadata).

:meth:`Recall.learn` is the fast path of fact extraction: during the turn, beside the model call, memory
reads the user's message with its rules (no model) and stores what it states, so a fact said is a fact
known on the next turn; the outbox's extraction by a model refines it later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import grpc
import structlog

from moteur.gateway.metrics import RECALLS
from moteur.gateway.wording import content_stems, speaks_of_user
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
KINDS = {"fact": memory_pb2.MEMORY_KIND_FACT, "message": memory_pb2.MEMORY_KIND_MESSAGE,
         "reply": memory_pb2.MEMORY_KIND_REPLY, "document_chunk": memory_pb2.MEMORY_KIND_DOCUMENT_CHUNK}


@dataclass(frozen=True, slots=True)
class Choice:
    """Which memories go into the prompt, from what memory found (calibrated on ``evals/recall.yaml``).

    - the assistant's past answers are left out unless ``replies`` (an old wrong answer recalled is repeated),
      and so are the user's past questions and requests — a message must state something in the first person
      (wording.py): a request holds no answer, yet a request made again is its nearest neighbour;
    - a memory ranks ``fact_bonus`` above its cosine when it is a fact, and ``word_bonus`` above when it shares
      a content word with the question (E5's cosines are compressed: a question sits about as near to other
      questions as to the statement that answers it, and plain shared words break the tie);
    - a memory is kept when its rank score is at least ``min_score`` and at most ``margin`` below the best."""

    min_score: float
    margin: float = 1.0
    fact_bonus: float = 0.0
    replies: bool = False
    word_bonus: float = 0.0

    def rank(self, question: str, kind: str, text: str) -> float | None:
        """What is added to a memory's cosine to rank it, or None when it is left out."""
        if not self.replies and (kind == "reply" or text.startswith("assistant: ")):
            return None
        if kind == "message" and (text.rstrip().endswith("?") or not speaks_of_user(text)):
            return None
        shared = self.word_bonus if self.word_bonus and content_stems(question) & content_stems(text) else 0.0
        return shared + (self.fact_bonus if kind == "fact" else 0.0)

    def choose(self, question: str, found: Sequence[tuple[str, str, float]]) -> list[tuple[int, float]]:
        """(index, rank score) of the memories to use, best first, among ``found``: (kind, text, cosine)."""
        ranked = sorted(((i, score + bonus) for i, (kind, text, score) in enumerate(found)
                         if (bonus := self.rank(question, kind, text)) is not None), key=lambda pair: -pair[1])
        if not ranked:
            return []
        floor = max(self.min_score, ranked[0][1] - self.margin)
        return [(i, score) for i, score in ranked if score >= floor]


class Recall:
    def __init__(self, memory: memory_pb2_grpc.MemoryStub, top_k: int = 8, min_score: float = 0.35,
                 token_budget: int = 256, timeout_seconds: float = 1.0, margin: float = 1.0,
                 kinds: Sequence[str] = ("fact", "message"), fact_bonus: float = 0.0,
                 word_bonus: float = 0.0) -> None:
        self._memory = memory
        self._top_k = top_k
        self._kinds = [KINDS[k] for k in kinds]
        self.choice = Choice(min_score, margin, fact_bonus, replies="reply" in kinds, word_bonus=word_bonus)
        self._token_budget = token_budget
        self._timeout = timeout_seconds
        self._learning: set[asyncio.Task[None]] = set()

    def learn(self, identity: Identity, user: str, session_id: str, message_id: str, text: str) -> asyncio.Task[None]:
        """Start storing the facts ``text`` states, by memory's rules (no model call); await the task before the
        turn's answer is given. A failure only logs: the outbox's extraction reads the message again later."""
        request = memory_pb2.ExtractRequest(user_id=user, session_id=session_id, user_message=text[:MAX_TEXT_CHARS],
                                            source_ids=[message_id], rules_only=True)

        async def extract() -> None:
            try:
                await self._memory.Extract(request, metadata=mesh_metadata(identity), timeout=self._timeout * 2)
            except grpc.aio.AioRpcError as exc:
                log.warning("recall.learn_failed", code=exc.code().name, error=(exc.details() or "")[:200])

        task = asyncio.create_task(extract(), name="memory-learn")
        self._learning.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._learning.discard)
        return task

    async def search(self, identity: Identity, user: str, question: str) -> Recollection:
        request = memory_pb2.SearchRequest(
            # Twice as many as used: a fact's bonus may lift it above messages memory ranked first.
            text=question[:MAX_TEXT_CHARS], user_id=user, top_k=min(100, self._top_k * 2),
            min_score=max(-1.0, self.choice.min_score - self.choice.fact_bonus - self.choice.word_bonus),
            kinds=self._kinds,
        )
        try:
            found = await self._memory.Search(request, metadata=mesh_metadata(identity), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            RECALLS.labels("unavailable").inc()
            log.warning("recall.unavailable", code=exc.code().name, error=(exc.details() or "")[:200])
            return Recollection("unavailable")
        # A message a fact found here was drawn from says the same, less plainly: the fact stands for it.
        fact, message = memory_pb2.MEMORY_KIND_FACT, memory_pb2.MEMORY_KIND_MESSAGE
        represented = {s for h in found.hits if h.record.kind == fact for s in h.record.source_ids}
        hits = [h for h in found.hits if h.record.kind != message or h.record.id not in represented]
        chosen = self.choice.choose(question, [(_kind(h.record.kind), h.record.text, h.score)
                                               for h in hits])[:self._top_k]
        memories = tuple(Recalled(hits[i].record.id, _kind(hits[i].record.kind), hits[i].record.text, hits[i].score,
                                  tuple(hits[i].record.source_ids)) for i, _ in chosen)
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


def _kind(kind: int) -> str:
    return memory_pb2.MemoryKind.Name(kind).removeprefix("MEMORY_KIND_").lower()
