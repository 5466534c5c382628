"""Tenant-wide switches, set by a tenant's admin keys: memory recall, fact extraction, and whether chat
messages reach memory at all (all on by default).

Read on every turn, so they are cached for ``cache_seconds`` — how soon a change applies on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import TTLCache
from pymongo.asynchronous.database import AsyncDatabase


@dataclass(frozen=True, slots=True)
class TenantSwitches:
    memory_recall: bool = True
    fact_extraction: bool = True
    message_memory: bool = True


_SWITCHES = ("memory_recall", "fact_extraction", "message_memory")


class TenantSettings:
    def __init__(self, db: AsyncDatabase, cache_seconds: float = 2.0) -> None:
        self._settings = db["tenant_settings"]
        self._cache: TTLCache[str, TenantSwitches] = TTLCache(maxsize=100_000, ttl=cache_seconds)

    async def get(self, tenant: str) -> TenantSwitches:
        cached = self._cache.get(tenant)
        if cached is None:
            doc = await self._settings.find_one({"_id": tenant}) or {}
            cached = self._cache[tenant] = TenantSwitches(**{k: doc.get(k, True) for k in _SWITCHES})
        return cached

    async def set(self, tenant: str, **switches: bool | None) -> TenantSwitches:
        changes = {k: v for k, v in switches.items() if k in _SWITCHES and v is not None}
        if changes:
            await self._settings.update_one({"_id": tenant}, {"$set": changes}, upsert=True)
            self._cache.pop(tenant, None)
        return await self.get(tenant)
