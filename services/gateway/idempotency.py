"""Idempotency keys: a retried chat turn gets its first answer back instead of a second model call.

Invariant: per (tenant, key) at most one turn runs at a time and at most one answer is ever recorded.
A turn *claims* the key before doing anything (a unique ``_id`` insert is the lock), and either
*completes* it with the answer or *releases* it on failure so that a retry can run. A claim left by a
crashed gateway expires after :data:`CLAIM_LEASE_SECONDS`. Records are kept for 24 hours (TTL index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from moteur.runtime.errors import Aborted, FailedPrecondition
from moteur.runtime.mongo import Update

CLAIM_LEASE_SECONDS = 600
RETENTION_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class Replay:
    """What a completed turn recorded under its key."""

    answer: dict[str, Any]


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self._records = db["idempotency"]

    async def ensure_indexes(self) -> None:
        await self._records.create_index("created_at", expireAfterSeconds=RETENTION_SECONDS)

    async def claim(self, tenant: str, key: str, request_fingerprint: str) -> Replay | None:
        """Claim the key for a new turn (None), or return the recorded answer of the first one."""
        now = datetime.now(UTC)
        record_id = f"{tenant}\x1f{key}"
        try:
            await self._records.insert_one(
                {"_id": record_id, "state": "pending", "fingerprint": request_fingerprint, "created_at": now}
            )
            return None
        except DuplicateKeyError:
            pass
        record = await self._records.find_one({"_id": record_id})
        if record is None:  # released between our insert and our read: try once more
            return await self.claim(tenant, key, request_fingerprint)
        if record["fingerprint"] != request_fingerprint:
            raise FailedPrecondition(
                f"idempotency key {key!r} was already used for a different request; use a new key"
            )
        if record["state"] == "done":
            return Replay(record["answer"])
        stale = record["created_at"] < now - timedelta(seconds=CLAIM_LEASE_SECONDS)
        if stale:
            taken = await self._records.update_one(
                {"_id": record_id, "state": "pending", "created_at": record["created_at"]},
                {"$set": {"created_at": now}},
            )
            if taken.modified_count == 1:
                return None
        raise Aborted(f"a request with idempotency key {key!r} is still in progress; retry when it has finished")

    def complete_write(self, tenant: str, key: str, answer: dict[str, Any]) -> Update:
        """The write that records the answer, sent with the turn's messages so both land together."""
        return Update(self._records.full_name, {"_id": f"{tenant}\x1f{key}"},
                      {"$set": {"state": "done", "answer": answer}})

    async def release(self, tenant: str, key: str) -> None:
        await self._records.delete_one({"_id": f"{tenant}\x1f{key}", "state": "pending"})
