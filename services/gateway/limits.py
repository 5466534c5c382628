"""Which limits apply to a call: tiers from a file, overrides per tenant, user or key from MongoDB.

Invariant: the limits of a scope are its override when one exists, else its tier's, never a mix — an
override is a whole new set, so reading it back says exactly what is enforced. 0 means unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field
from pymongo.asynchronous.database import AsyncDatabase

from moteur.runtime.identity import Identity

ScopeKind = Literal["key", "user", "tenant"]
PRIORITY_NAMES = ("critical", "high", "normal", "low", "batch")


class LimitSet(BaseModel):
    """One scope's limits; 0 is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int = Field(0, ge=0, le=10_000_000)
    tokens_per_minute: int = Field(0, ge=0, le=10_000_000_000)
    concurrent_requests: int = Field(0, ge=0, le=100_000)
    tokens_per_day: int = Field(0, ge=0, le=10**13)
    tokens_per_month: int = Field(0, ge=0, le=10**14)
    cost_micro_usd_per_month: int = Field(0, ge=0, le=10**15)
    cost_micro_usd_per_day: int = Field(0, ge=0, le=10**14)


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priorities: list[Literal["critical", "high", "normal", "low", "batch"]]
    on_redis_down: Literal["fail_open", "fail_closed"] = "fail_closed"
    weight: int = Field(1, ge=1, le=100)  # turns per round for this tier's tenants in the fair queue
    key: LimitSet = LimitSet()
    user: LimitSet = LimitSet()
    tenant: LimitSet = LimitSet()


class TiersConfig(BaseModel):
    tiers: dict[str, Tier] = Field(min_length=1)


def load_tiers(path: Path) -> TiersConfig:
    return TiersConfig.model_validate(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class LimitScope:
    """One dimension a call is counted in: ``tenant``, ``user:<id>`` or ``key:<id>`` of a tenant."""

    tenant: str
    kind: ScopeKind
    id: str  # the user or key id; the tenant's own id for kind "tenant"

    @property
    def name(self) -> str:
        return "tenant" if self.kind == "tenant" else f"{self.kind}:{self.id}"

    @property
    def subject(self) -> str:
        """How a QuotaFailure names it."""
        return f"tenant:{self.tenant}" if self.kind == "tenant" else f"tenant:{self.tenant}/{self.name}"


def scopes_of(identity: Identity, user: str) -> list[LimitScope]:
    scopes = [LimitScope(identity.tenant, "key", identity.key_id)]
    if user:
        scopes.append(LimitScope(identity.tenant, "user", user))
    scopes.append(LimitScope(identity.tenant, "tenant", identity.tenant))
    return scopes


class LimitsCatalog:
    """Effective limits per scope, with overrides cached for ``cache_seconds`` (how soon changes apply)."""

    def __init__(self, tiers: TiersConfig, db: AsyncDatabase, cache_seconds: float = 2.0) -> None:
        self.tiers = tiers
        self._overrides = db["limit_overrides"]
        self._cache: TTLCache[tuple[str, str], LimitSet | None] = TTLCache(maxsize=100_000, ttl=cache_seconds)

    def tier(self, name: str) -> Tier:
        # A key whose tier was removed from the file gets the most restrictive one rather than none.
        return self.tiers.tiers.get(name) or min(
            self.tiers.tiers.values(), key=lambda t: t.tenant.requests_per_minute or 10**12
        )

    async def limits(self, scope: LimitScope, tier: str) -> LimitSet:
        override = await self._override(scope)
        if override is not None:
            return override
        return getattr(self.tier(tier), scope.kind)

    async def override(self, scope: LimitScope, limits: LimitSet) -> None:
        await self._overrides.replace_one(
            {"_id": f"{scope.tenant}\x1f{scope.name}"},
            {"tenant": scope.tenant, "scope": scope.name, **limits.model_dump()}, upsert=True,
        )
        self._cache.pop((scope.tenant, scope.name), None)

    async def _override(self, scope: LimitScope) -> LimitSet | None:
        cache_key = (scope.tenant, scope.name)
        if cache_key in self._cache:
            return self._cache[cache_key]
        doc = await self._overrides.find_one({"_id": f"{scope.tenant}\x1f{scope.name}"})
        value = None if doc is None else LimitSet(**{k: doc[k] for k in LimitSet.model_fields if k in doc})
        self._cache[cache_key] = value
        return value
