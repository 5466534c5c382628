"""Tenant-wide switches, set by a tenant's admin keys: memory recall, fact extraction, and whether chat
messages reach memory at all (all on by default); and the tenant's response cache (off by default).

Read on every turn, so they are cached for ``cache_seconds`` — how soon a change applies on every replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachetools import TTLCache
from pymongo.asynchronous.database import AsyncDatabase

DEFAULT_CACHE_TTL_SECONDS = 3600
MIN_CACHE_TTL_SECONDS, MAX_CACHE_TTL_SECONDS = 60, 7 * 24 * 3600  # memory keeps an answer at most 7 days


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The tenant's semantic response cache (moteur.gateway.response_cache): whether it is on, for which
    request types (empty: every one), and how long an answer is kept."""

    enabled: bool = False
    request_types: tuple[int, ...] = ()
    ttl_seconds: int = DEFAULT_CACHE_TTL_SECONDS
    # When it was last turned on (ms): part of every context digest, so that what was kept before it was turned
    # off is never found again, even an answer a replica stored while it learnt of the change.
    since_ms: int = 0

    def covers(self, request_type: int) -> bool:
        return self.enabled and (not self.request_types or request_type in self.request_types)

    def as_doc(self) -> dict[str, object]:
        return {"enabled": self.enabled, "request_types": list(self.request_types), "ttl_seconds": self.ttl_seconds,
                "since_ms": self.since_ms}

    @classmethod
    def from_doc(cls, doc: dict[str, object] | None) -> CachePolicy:
        if not doc:
            return cls()
        types, ttl, since = doc.get("request_types"), doc.get("ttl_seconds"), doc.get("since_ms")
        return cls(bool(doc.get("enabled")), tuple(int(t) for t in types) if isinstance(types, list) else (),
                   ttl if isinstance(ttl, int) and ttl > 0 else DEFAULT_CACHE_TTL_SECONDS,
                   since if isinstance(since, int) else 0)


@dataclass(frozen=True, slots=True)
class TenantSwitches:
    memory_recall: bool = True
    fact_extraction: bool = True
    message_memory: bool = True
    response_cache: CachePolicy = field(default_factory=CachePolicy)


_SWITCHES = ("memory_recall", "fact_extraction", "message_memory")


class TenantSettings:
    def __init__(self, db: AsyncDatabase, cache_seconds: float = 2.0) -> None:
        self._settings = db["tenant_settings"]
        self._cache: TTLCache[str, TenantSwitches] = TTLCache(maxsize=100_000, ttl=cache_seconds)

    async def get(self, tenant: str) -> TenantSwitches:
        cached = self._cache.get(tenant)
        if cached is None:
            doc = await self._settings.find_one({"_id": tenant}) or {}
            cached = self._cache[tenant] = TenantSwitches(**{k: doc.get(k, True) for k in _SWITCHES},
                                                          response_cache=CachePolicy.from_doc(doc.get("response_cache")))
        return cached

    async def set(self, tenant: str, response_cache: CachePolicy | None = None,
                  **switches: bool | None) -> TenantSwitches:
        changes: dict[str, object] = {k: v for k, v in switches.items() if k in _SWITCHES and v is not None}
        if response_cache is not None:
            changes["response_cache"] = response_cache.as_doc()
        if changes:
            await self._settings.update_one({"_id": tenant}, {"$set": changes}, upsert=True)
            self._cache.pop(tenant, None)
        return await self.get(tenant)
