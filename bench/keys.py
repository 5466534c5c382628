"""API keys for benchmarks, with limits high enough to measure the mesh, not the limits."""

from __future__ import annotations

from moteur.devstack.stack import REPO_CONFIG, LocalStack
from moteur.gateway.limits import LimitsCatalog, LimitScope, LimitSet, load_tiers
from moteur.gateway.tenants import CachePolicy, TenantSettings
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings

# Not 0 (unlimited): the limiter still does all of its work, it just never says no.
GENEROUS = LimitSet(requests_per_minute=10_000_000, tokens_per_minute=10_000_000_000, concurrent_requests=100_000,
                    tokens_per_day=10**13, tokens_per_month=10**14, cost_micro_usd_per_month=10**15)


async def bench_key(
    stack: LocalStack, tenant: str, user: str, limits: LimitSet = GENEROUS, memory: bool = False,
    recall: bool = True, cache: bool = False,
) -> str:
    """A service-tier key of ``user`` (all priorities), its key, user and tenant limits set to ``limits``.

    Without ``memory`` the tenant's messages do not reach memory: the benchmarks of the gateway measure its
    own path, not the embedding of every message competing for this machine's two cores (the memory
    benchmark measures that). With ``memory`` but not ``recall``, messages and facts are stored and nothing
    is recalled. With ``cache`` the tenant's response cache is on (every request type, the default TTL)."""
    settings = MongoSettings(mongo_uri=stack.mongo_uri)
    mongo = connect_mongo(settings)
    try:
        db = database(mongo, settings)
        key, record = await ApiKeyStore(db).create(tenant, user, "service")
        catalog = LimitsCatalog(load_tiers(REPO_CONFIG / "tiers.yaml"), db)
        for kind, scope_id in (("key", record.key_id), ("user", user), ("tenant", tenant)):
            scope = LimitScope(tenant, kind, scope_id)
            await catalog.override(scope, limits)
        if not memory:
            await TenantSettings(db).set(tenant, message_memory=False, memory_recall=False, fact_extraction=False)
        elif not recall:
            await TenantSettings(db).set(tenant, memory_recall=False)
        if cache:
            await TenantSettings(db).set(tenant, response_cache=CachePolicy(enabled=True, since_ms=1))
        return key
    finally:
        await mongo.close()
