"""The memory records and the filters over them, shared by the Milvus store and the exact index."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["message", "reply", "fact", "document_chunk"]


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    id: str
    tenant: str
    user: str
    session: str
    kind: Kind
    text: str
    model: str
    created_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    source_ids: tuple[str, ...] = ()

    def to_row(self, vector: np.ndarray) -> dict[str, Any]:
        return {"id": self.id, "vector": vector.tolist(), "tenant": self.tenant, "user": self.user,
                "session": self.session, "kind": self.kind, "text": self.text, "created_at": self.created_at_ms,
                "source_ids": json.dumps(list(self.source_ids)), "model": self.model}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MemoryRecord:
        return cls(id=row["id"], tenant=row["tenant"], user=row["user"], session=row["session"], kind=row["kind"],
                   text=row["text"], model=row["model"], created_at_ms=row["created_at"],
                   source_ids=tuple(json.loads(row["source_ids"] or "[]")))


@dataclass(frozen=True, slots=True)
class SearchFilter:
    tenant: str
    model: str = ""  # searches always set it: vectors of another model are not comparable
    other_models: str = ""  # only vectors NOT made by this model (what a re-embedding has left to do)
    user: str = ""
    session: str = ""
    kinds: Sequence[Kind] = ()
    created_after_ms: int = 0
    created_before_ms: int = 0
    ids: Sequence[str] = ()

    def expression(self) -> str:
        """A Milvus boolean expression; string values are JSON-quoted, so no value can change its meaning."""
        terms = [f"tenant == {json.dumps(self.tenant)}"]
        if self.model:
            terms.append(f"model == {json.dumps(self.model)}")
        if self.other_models:
            terms.append(f"model != {json.dumps(self.other_models)}")
        if self.user:
            terms.append(f"user == {json.dumps(self.user)}")
        if self.session:
            terms.append(f"session == {json.dumps(self.session)}")
        if self.kinds:
            terms.append(f"kind in {json.dumps(list(self.kinds))}")
        if self.created_after_ms:
            terms.append(f"created_at >= {int(self.created_after_ms)}")
        if self.created_before_ms:
            terms.append(f"created_at < {int(self.created_before_ms)}")
        if self.ids:
            terms.append(f"id in {json.dumps(list(self.ids))}")
        return " and ".join(terms)


@dataclass(frozen=True, slots=True)
class Hit:
    record: MemoryRecord
    score: float
