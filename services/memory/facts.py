"""The long-term memory of key facts: candidates from a turn merged into what is known of the user.

For each candidate (see extraction.py) the user's nearest existing facts decide, as Mem0 does:
- NONE when an existing fact already says it (cosine ≥ ``same``);
- UPDATE when the candidate fills the slot of an existing fact ("lives in" Lyon → Paris) or refines a
  close one (cosine ≥ ``close``): the fact keeps its id, its text changes;
- DELETE when the user withdrew it ("I no longer live in Lyon") and a matching fact exists;
- ADD otherwise.
The text of a fact lives in Milvus with its vector (what search reads); MongoDB keeps its slot and every
change of it (``memory_fact_history``: action, text, previous text, when, from which messages).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from moteur.memory.embeddings import BatchingEmbedder
from moteur.memory.extraction import Candidate, LLMExtractor, RuleExtractor
from moteur.memory.metrics import EXTRACTIONS, FACT_CHANGES
from moteur.memory.store import MemoryRecord, SearchFilter, VectorStore
from moteur.runtime.errors import MoteurError
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import insert_new

log = structlog.get_logger("moteur.memory.facts")

# Cosines of the default model (multilingual-e5-small), from the fact pairs of evals/recall.yaml: two different
# facts scored up to 0.956 ("lives in Marseille" / "lives in Lyon"), the same fact said otherwise from 0.936.
# A wrong NONE drops a new fact and a wrong UPDATE overwrites another one, so both sit above every different
# pair; what only a paraphrase would have merged stays two facts (a slot still replaces by its name).
SAME, CLOSE = 0.975, 0.96


@dataclass(frozen=True, slots=True)
class FactChange:
    action: str  # "add", "update", "delete", "none"
    fact: MemoryRecord
    previous_text: str = ""


@dataclass(frozen=True, slots=True)
class Turn:
    tenant: str
    user: str
    session: str
    user_message: str
    assistant_message: str
    source_ids: tuple[str, ...] = ()


class FactMemory:
    def __init__(self, db: AsyncDatabase, embedder: BatchingEmbedder, store: VectorStore,
                 llm: LLMExtractor | None, same: float = SAME, close: float = CLOSE) -> None:
        self._slots = db["memory_facts"]
        self._history = db["memory_fact_history"]
        self._embedder = embedder
        self._store = store
        self._llm = llm
        self._rules = RuleExtractor()
        self._same, self._close = same, close

    async def ensure_indexes(self) -> None:
        await self._slots.create_index([("tenant", 1), ("user", 1), ("slot", 1)])
        await self._history.create_index([("tenant", 1), ("fact_id", 1)])

    async def extract(self, turn: Turn, rules_only: bool = False) -> tuple[list[FactChange], str]:
        """Read the turn for facts and merge them; ``rules_only`` asks no model (fast enough for the turn
        itself — a model reading the same turn later finds the same facts known, NONE)."""
        candidates, extractor = await self._candidates(turn, rules_only)
        changes = [await self._merge(turn, c) for c in candidates]
        for change in changes:
            FACT_CHANGES.labels(change.action, extractor).inc()
        return changes, extractor

    async def _candidates(self, turn: Turn, rules_only: bool) -> tuple[list[Candidate], str]:
        if self._llm is not None and not rules_only:
            try:
                found = await self._llm.extract(turn.user_message, turn.assistant_message)
            except MoteurError as exc:
                log.info("facts.llm_unavailable", error=exc.message[:200])
                found = []
            if found:
                EXTRACTIONS.labels("llm").inc()
                # The rules know slots (what replaces what): their candidates win where both found one.
                ruled = await self._rules.extract(turn.user_message, turn.assistant_message)
                return ruled + [c for c in found if not _covered(c, ruled)], "llm"
        EXTRACTIONS.labels("rules").inc()
        return await self._rules.extract(turn.user_message, turn.assistant_message), "rules"

    async def _merge(self, turn: Turn, candidate: Candidate) -> FactChange:
        [vector] = await self._embedder.embed([candidate.text])
        where = SearchFilter(tenant=turn.tenant, model=self._embedder.model_id, user=turn.user, kinds=["fact"])
        nearest = await self._store.search(vector, where, top_k=3, min_score=0.5)
        slotted = await self._slotted(turn, candidate.slot)
        if candidate.negated:
            target = slotted or next((h.record for h in nearest if h.score >= self._close), None)
            if target is None or (slotted is not None and _value(target.text) != _value(candidate.text)):
                return FactChange("none", self._record(turn, candidate.text, new_id()))
            await self._store.delete(SearchFilter(tenant=turn.tenant, ids=[target.id]))
            await self._slots.delete_one({"_id": target.id, "tenant": turn.tenant})
            await self._remember("delete", turn, target, target.text)
            return FactChange("delete", target, target.text)
        if nearest and nearest[0].score >= self._same:
            return FactChange("none", nearest[0].record)
        replaced = slotted or next((h.record for h in nearest if h.score >= self._close), None)
        fact = self._record(turn, candidate.text, replaced.id if replaced else new_id())
        await self._store.upsert([fact], vector[None, :])
        if candidate.slot:
            await self._slots.update_one({"_id": fact.id}, {"$set": {
                "tenant": turn.tenant, "user": turn.user, "slot": candidate.slot, "text": fact.text}}, upsert=True)
        action = "update" if replaced else "add"
        await self._remember(action, turn, fact, replaced.text if replaced else "")
        return FactChange(action, fact, replaced.text if replaced else "")

    async def _slotted(self, turn: Turn, slot: str) -> MemoryRecord | None:
        if not slot:
            return None
        doc = await self._slots.find_one({"tenant": turn.tenant, "user": turn.user, "slot": slot})
        if doc is None:
            return None
        stored = await self._store.get(SearchFilter(tenant=turn.tenant, ids=[doc["_id"]]), limit=1)
        return stored[0] if stored else None

    async def _remember(self, action: str, turn: Turn, fact: MemoryRecord, previous: str) -> None:
        await insert_new(self._history, {
            "_id": new_id(), "tenant": turn.tenant, "user": turn.user, "fact_id": fact.id, "action": action,
            "text": fact.text, "previous_text": previous, "session": turn.session,
            "source_ids": list(turn.source_ids), "at": datetime.datetime.now(datetime.UTC),
        })

    async def edited(self, fact: MemoryRecord, previous_text: str) -> None:
        """A fact changed by hand (Upsert of an existing id): its history records it."""
        await self._slots.update_one({"_id": fact.id, "tenant": fact.tenant}, {"$set": {"text": fact.text}})
        turn = Turn(fact.tenant, fact.user, fact.session, "", "", fact.source_ids)
        await self._remember("edit", turn, fact, previous_text)

    async def forget(self, tenant: str, user: str) -> None:
        """Everything kept of a user's facts beside their vectors: slots and history."""
        await self._slots.delete_many({"tenant": tenant, "user": user})
        await self._history.delete_many({"tenant": tenant, "user": user})

    async def deleted(self, facts: list[MemoryRecord]) -> None:
        """Facts deleted by hand: their history records it (and outlives them)."""
        for fact in facts:
            await self._slots.delete_one({"_id": fact.id, "tenant": fact.tenant})
            turn = Turn(fact.tenant, fact.user, fact.session, "", "", fact.source_ids)
            await self._remember("delete", turn, fact, fact.text)

    async def history(self, tenant: str, user: str, fact_id: str) -> list[dict[str, Any]]:
        """The fact's changes, oldest first."""
        found = self._history.find({"tenant": tenant, "user": user, "fact_id": fact_id}).sort([("at", 1), ("_id", 1)])
        return await found.to_list(length=1000)

    def _record(self, turn: Turn, text: str, fact_id: str) -> MemoryRecord:
        return MemoryRecord(id=fact_id, tenant=turn.tenant, user=turn.user, session=turn.session, kind="fact",
                            text=text, model=self._embedder.model_id, source_ids=turn.source_ids)


def _value(text: str) -> str:
    return text.rstrip(".").split()[-1].lower()


def _covered(candidate: Candidate, others: Sequence[Candidate]) -> bool:
    words = set(candidate.text.lower().split())
    return any(len(words & set(o.text.lower().split())) >= max(3, len(words) // 2) for o in others)
