"""The usage ledger: tokens and cost of every model-answered turn, per key, user, tenant and model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from moteur.gateway.limits import LimitScope
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import Insert


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

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                          self.cost_micro_usd + other.cost_micro_usd)

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> TokenUsage:
        return cls(values.get("input_tokens", 0), values.get("output_tokens", 0), values.get("cost_micro_usd", 0))


class UsageLedger:
    def __init__(self, db: AsyncDatabase) -> None:
        self._usage = db["usage"]

    @property
    def collection(self) -> Any:
        return self._usage

    async def ensure_indexes(self) -> None:
        await self._usage.create_index([("tenant", 1), ("created_at", 1)])
        # what a lost quota counter of a user or a key is rebuilt from (spent)
        await self._usage.create_index([("tenant", 1), ("user", 1), ("created_at", 1)])
        await self._usage.create_index([("tenant", 1), ("key_id", 1), ("created_at", 1)])

    async def spent(self, scope: LimitScope, start: datetime, end: datetime) -> TokenUsage:
        """The tokens and cost the ledger holds for one limit scope (key, user or tenant) in [start, end).

        Only turns that ended are in the ledger (a turn's usage is written before its limits are settled),
        so this is the settled part of a quota's counter: without the reservations of calls still running.
        """
        match: dict[str, Any] = {"tenant": scope.tenant, "created_at": {"$gte": start, "$lt": end}}
        if scope.kind != "tenant":
            match[_SCOPE_FIELDS[scope.kind]] = scope.id
        pipeline = [{"$match": match}, {"$group": {"_id": None, **_SUMS}}]
        rows = await (await self._usage.aggregate(pipeline)).to_list()
        return TokenUsage.from_dict(rows[0]) if rows else TokenUsage()

    def record_write(self, identity: Identity, user: str, session_id: str, model: str, usage: TokenUsage) -> Insert:
        """The write that records one turn's usage, sent with the turn's messages."""
        return Insert(self._usage.full_name, {
            "_id": new_id(), "tenant": identity.tenant, "key_id": identity.key_id, "user": user,
            "session_id": session_id, "model": model, **usage.as_dict(), "created_at": datetime.now(UTC)})


_SCOPE_FIELDS = {"key": "key_id", "user": "user"}
_SUMS = {"input_tokens": {"$sum": "$input_tokens"}, "output_tokens": {"$sum": "$output_tokens"},
         "cost_micro_usd": {"$sum": "$cost_micro_usd"}}

GROUPS: dict[str, Any] = {
    "": None, "model": "$model", "user": "$user", "key": "$key_id",
    "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$created_at"}},
}


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: str
    requests: int
    usage: TokenUsage


async def usage_report(
    ledger: UsageLedger, tenant: str, user: str, start: datetime, end: datetime, group_by: str
) -> list[UsageRow]:
    """Requests, tokens and cost of a tenant (or one of its users) in [start, end), grouped."""
    match: dict[str, Any] = {"tenant": tenant, "created_at": {"$gte": start, "$lt": end}}
    if user:
        match["user"] = user
    pipeline = [
        {"$match": match},
        {"$group": {"_id": GROUPS[group_by], "requests": {"$sum": 1}, **_SUMS}},
        {"$sort": {"_id": 1}},
    ]
    rows = await (await ledger.collection.aggregate(pipeline)).to_list()
    return [UsageRow(str(r["_id"] or ""), r["requests"], TokenUsage.from_dict(r)) for r in rows]
