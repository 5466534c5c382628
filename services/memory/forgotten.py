"""Users a tenant asked memory to forget, and when: writes about them that were on their way then are dropped.

The gateway's outbox relays hold no lease on the batch they send, so a message read for sending just before
ForgetUser can land just after it and bring the user back. Memory keeps the time of each forgetting (MongoDB,
shared by every replica) and drops records, and fact extractions, of messages older than it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

from pymongo.asynchronous.database import AsyncDatabase

from moteur.memory.metrics import LATE_WRITES_DROPPED
from moteur.runtime.ids import created_ms

T = TypeVar("T")


class ForgottenUsers:
    def __init__(self, db: AsyncDatabase) -> None:
        self._forgotten = db["memory_forgotten_users"]

    async def forget(self, tenant: str, user: str) -> None:
        """Record the forgetting first: whatever arrives for the user while their memories go is dropped."""
        await self._forgotten.update_one({"_id": f"{tenant}/{user}"},
                                         {"$set": {"tenant": tenant, "user": user, "at": datetime.now(UTC)}},
                                         upsert=True)

    async def forgotten_at_ms(self, tenant: str, users: Iterable[str]) -> dict[str, int]:
        """When each of ``users`` (those ever forgotten) was last forgotten, in ms since the epoch."""
        ids = [f"{tenant}/{user}" for user in set(users) if user]
        if not ids:
            return {}
        found = await self._forgotten.find({"_id": {"$in": ids}}).to_list(length=len(ids))
        return {doc["user"]: int(doc["at"].timestamp() * 1000) for doc in found}  # tz-aware (connect_mongo)

    async def keep_newer(self, tenant: str, items: list[tuple[str, int, T]], stage: str) -> list[T]:
        """The items (user, created_at ms, item) not older than their user's forgetting."""
        forgotten = await self.forgotten_at_ms(tenant, (user for user, _, _ in items))
        kept = [item for user, created_ms, item in items if created_ms > forgotten.get(user, -1)]
        if dropped := len(items) - len(kept):
            LATE_WRITES_DROPPED.labels(stage).inc(dropped)
        return kept


def created_ms_of(source_ids: Iterable[str]) -> int | None:
    """The creation time the first message id among ``source_ids`` carries; None when none is one."""
    return next((ms for source in source_ids if (ms := created_ms(source)) is not None), None)
