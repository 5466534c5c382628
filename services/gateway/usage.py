"""The usage ledger: tokens and cost of every model-answered turn, per key, user, tenant and model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import InsertOne
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cost_micro_usd": self.cost_micro_usd}

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> TokenUsage:
        return cls(values.get("input_tokens", 0), values.get("output_tokens", 0), values.get("cost_micro_usd", 0))


class UsageLedger:
    def __init__(self, db: AsyncDatabase) -> None:
        self._usage = db["usage"]

    async def ensure_indexes(self) -> None:
        await self._usage.create_index([("tenant", 1), ("created_at", 1)])

    def record_write(self, identity: Identity, user: str, session_id: str, model: str, usage: TokenUsage) -> InsertOne:
        """The write that records one turn's usage, sent with the turn's messages."""
        return InsertOne(
            {"_id": new_id(), "tenant": identity.tenant, "key_id": identity.key_id, "user": user,
             "session_id": session_id, "model": model, **usage.as_dict(), "created_at": datetime.now(UTC)},
            namespace=self._usage.full_name,
        )
