"""Day and month quotas survive Redis losing its counters: a user spends, Redis restarts (SIGTERM, kill -9,
kill -9 with its data gone, its counters evicted), the user spends more, and the tokens admitted for the
day never pass the quota by more than the slack ``moteur.gateway.limiter`` documents.

The slack measured here: one call at a time whose answer stays within ``max_output_tokens`` reserves more
than it uses, so the quota is never passed (``SEQUENTIAL_SLACK`` = 0); with calls in flight when a counter is
lost, by at most their real usage (they are charged when they settle, and a call may be admitted meanwhile).
Each case prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from reliability_kit import Keys

from moteur.client import AsyncMoteurClient, MoteurClientError
from moteur.devstack.stack import REPO_CONFIG, LocalStack, StackOptions
from moteur.gateway.limiter import RateLimiter, period_bounds
from moteur.gateway.limits import LimitsCatalog, LimitScope, LimitSet, load_tiers
from moteur.gateway.usage import TokenUsage, UsageLedger
from moteur.runtime.errors import ResourceExhausted
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings

pytestmark = pytest.mark.timeout(300)

QUOTA = 600  # tokens a day for the user of each case
SEQUENTIAL_SLACK = 0  # one call at a time, each using less than it reserved: the quota is never passed
MAX_OUTPUT = 16
IN_FLIGHT = 4  # calls running when the counter is lost, in the case that measures their slack


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # "paced" answers after 0.8 s: calls that are still running when Redis loses its data
    paced = {"name": "paced", "provider": "instant", "simulated_latency_ms": 800}
    options = StackOptions(data_dir=tmp_path_factory.mktemp("quotas"), model_server=False, fact_extractor="rules",
                           extra_models=[paced])
    with LocalStack(options) as running:
        yield running


@pytest.fixture
async def keys(quota_stack: LocalStack, own_keys: Callable[[LocalStack], Awaitable[Keys]]) -> AsyncIterator[Keys]:
    made = await own_keys(quota_stack)
    yield made
    await made.close()


async def _quota_user(keys: Keys) -> tuple[str, AsyncMoteurClient]:
    """A user of a fresh tenant with a day quota of QUOTA tokens and a month quota well above it, and no other
    quota (tier service: its tenant has none)."""
    tenant = f"t-{new_id().lower()}"
    _, admin = await keys.client(tenant, "", tier="service", admin=True)
    await admin.set_limits("user:u1", tokens_per_day=QUOTA, tokens_per_month=50 * QUOTA)
    _, user = await keys.client(tenant, "u1", tier="service")
    return tenant, user


async def _turn(user: AsyncMoteurClient) -> int:
    """One turn, always the same size: the tokens it used."""
    reply = await user.chat("how many tokens is this?", model_hint="instant", max_output_tokens=MAX_OUTPUT,
                            use_memory=False)
    return reply.usage.total_tokens


async def _spend(user: AsyncMoteurClient, at_least: int) -> int:
    """Turns one after another until ``at_least`` tokens were used or the day quota refuses; the tokens used."""
    spent = 0
    while spent < at_least:
        try:
            spent += await _turn(user)
        except MoteurClientError as error:
            assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "tokens_per_day" in error.message, error.message
            return spent
    return spent


def _rebuilt(stack: LocalStack, period: str) -> float:
    """The gateway's moteur_quota_counters_rebuilt_total{period}."""
    url = f"http://127.0.0.1:{stack.ports['gateway-metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "moteur_quota_counters_rebuilt_total" and sample.labels.get("period") == period:
                return sample.value
    return 0.0


def _sigterm(stack: LocalStack, tenant: str) -> None:
    stack.restart("redis")


def _kill(stack: LocalStack, tenant: str) -> None:
    stack.processes["redis"].kill()
    stack.processes["redis"].start()


def _kill_and_lose_data(stack: LocalStack, tenant: str) -> None:
    """kill -9, and its AOF gone with it: a pod rescheduled without its volume, a replica promoted empty."""
    stack.processes["redis"].kill()
    shutil.rmtree(stack.data_dir / "appendonlydir", ignore_errors=True)
    stack.processes["redis"].start()


def _evict(stack: LocalStack, tenant: str) -> None:
    """The user's quota counters evicted (maxmemory), Redis itself up."""

    async def evict() -> None:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            for period in ("day", "month"):
                async for key in client.scan_iter(match=f"rl:{{{tenant}}}:user:u1:{period}:*"):
                    if not key.endswith(b":seeded"):
                        await client.delete(key)
        finally:
            await client.aclose()

    asyncio.run(evict())


# (what happens to Redis, whether its counters are gone and rebuilt from the ledger)
LOSSES = {"sigterm": (_sigterm, False), "kill -9": (_kill, False), "kill -9, data lost": (_kill_and_lose_data, True),
          "evicted": (_evict, True)}


@pytest.mark.parametrize("loss", list(LOSSES))
async def test_the_day_quota_holds_across_a_redis_loss(quota_stack: LocalStack, keys: Keys, loss: str) -> None:
    disrupt, rebuilt = LOSSES[loss]
    tenant, user = await _quota_user(keys)
    before = await _spend(user, QUOTA // 2)
    rebuilt_before = _rebuilt(quota_stack, "day"), _rebuilt(quota_stack, "month")
    await asyncio.to_thread(disrupt, quota_stack, tenant)
    after = await _spend(user, 10 * QUOTA)  # until the quota refuses

    admitted = before + after
    ledger = (await user.get_usage()).total.total_tokens
    print(f"\n{loss}: admitted {admitted} tokens of a {QUOTA}-token day quota ({before} before the loss), "
          f"slack {admitted - QUOTA}")
    assert ledger == admitted
    assert admitted <= QUOTA + SEQUENTIAL_SLACK
    assert admitted > QUOTA - 2 * (MAX_OUTPUT + 8)  # refused only when the next call would not fit
    counts = _rebuilt(quota_stack, "day") - rebuilt_before[0], _rebuilt(quota_stack, "month") - rebuilt_before[1]
    assert counts == ((1, 1) if rebuilt else (0, 0))


async def test_calls_in_flight_when_the_counters_are_lost_pass_the_quota_by_their_usage_at_most(
    quota_stack: LocalStack, keys: Keys
) -> None:
    tenant, user = await _quota_user(keys)
    before = await _spend(user, QUOTA // 2)
    running = [asyncio.create_task(user.chat(f"running {i}", model_hint="paced", max_output_tokens=MAX_OUTPUT,
                                             use_memory=False)) for i in range(IN_FLIGHT)]
    await asyncio.sleep(0.2)  # admitted, reserved, now waiting for the model
    await asyncio.to_thread(_kill_and_lose_data, quota_stack, tenant)
    after = await _spend(user, 10 * QUOTA)
    in_flight = sum(reply.usage.total_tokens for reply in await asyncio.gather(*running))

    admitted = before + in_flight + after
    print(f"\nin flight: admitted {admitted} tokens of a {QUOTA}-token day quota, {in_flight} of them by "
          f"{IN_FLIGHT} calls running at the loss; slack {admitted - QUOTA}")
    assert (await user.get_usage()).total.total_tokens == admitted
    assert admitted <= QUOTA + in_flight
    # Settled, they are counted: the next call is still refused.
    with pytest.raises(MoteurClientError) as refused:
        await _turn(user)
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    client = aioredis.Redis.from_url(quota_stack.redis_url)
    try:
        counter = int(await client.get(f"rl:{{{tenant}}}:user:u1:day:{datetime.now(UTC):%Y-%m-%d}"))
    finally:
        await client.aclose()
    # never below what was used; above only by a call counted twice (ended just before the ledger was read)
    assert admitted <= counter <= admitted + in_flight


# -- the seed path, in process, against the stack's redis-server and SecantusDB -----------------------------

class _ReadTogether:
    """The usage ledger, read by two replicas that both seed only once both have read it."""

    def __init__(self, ledger: UsageLedger, readers: int) -> None:
        self._ledger = ledger
        self._barrier = asyncio.Barrier(readers)
        self.reads = 0

    async def spent(self, scope: LimitScope, start: datetime, end: datetime) -> TokenUsage:
        usage = await self._ledger.spent(scope, start, end)
        self.reads += 1
        async with asyncio.timeout(10):  # the other replica never came: it found the counter seeded
            await self._barrier.wait()
        return usage


@pytest.fixture
async def stores(quota_stack: LocalStack) -> AsyncIterator[tuple[aioredis.Redis, UsageLedger, LimitsCatalog]]:
    settings = MongoSettings(mongo_uri=quota_stack.mongo_uri)
    mongo = connect_mongo(settings)
    db = database(mongo, settings)
    client = aioredis.Redis.from_url(quota_stack.redis_url)
    yield client, UsageLedger(db), LimitsCatalog(load_tiers(REPO_CONFIG / "tiers.yaml"), db)
    await client.aclose()
    await mongo.close()


async def _ledger_holds(ledger: UsageLedger, tenant: str, tokens: int) -> None:
    await ledger.collection.insert_one(
        {"_id": new_id(), "tenant": tenant, "key_id": "k1", "user": "u1", "session_id": new_id(), "model": "instant",
         "input_tokens": tokens // 2, "output_tokens": tokens - tokens // 2, "cost_micro_usd": 0,
         "created_at": datetime.now(UTC)}
    )


async def _user_with_day_quota(catalog: LimitsCatalog, quota: int) -> Identity:
    identity = Identity(f"t-{new_id().lower()}", "u1", "service", key_id="k1")  # tier service: no other quota
    await catalog.override(LimitScope(identity.tenant, "user", "u1"), LimitSet(tokens_per_day=quota))
    return identity


def _rebuilt_here(period: str) -> float:
    """moteur_quota_counters_rebuilt_total{period} of this process (the limiters built by these tests)."""
    return REGISTRY.get_sample_value("moteur_quota_counters_rebuilt_total", {"period": period}) or 0.0


def _day_key(identity: Identity) -> str:
    return f"rl:{{{identity.tenant}}}:user:u1:day:{datetime.now(UTC):%Y-%m-%d}"


async def test_two_replicas_seeding_the_same_counter_at_once_count_the_ledger_once(
    stores: tuple[aioredis.Redis, UsageLedger, LimitsCatalog]
) -> None:
    client, ledger, catalog = stores
    identity = await _user_with_day_quota(catalog, 1000)
    await _ledger_holds(ledger, identity.tenant, 700)
    reading = _ReadTogether(ledger, 2)
    replicas = [RateLimiter(client, catalog, ledger=reading) for _ in range(2)]
    rebuilt = _rebuilt_here("day")

    await asyncio.gather(*(replica.admit(identity, "u1", 100) for replica in replicas))

    assert reading.reads == 2  # both missed the counter and both seeded it
    assert int(await client.get(_day_key(identity))) == 700 + 100 + 100
    assert _rebuilt_here("day") - rebuilt == 1  # one seed won, the other was dropped
    with pytest.raises(ResourceExhausted, match="tokens_per_day"):
        await replicas[0].admit(identity, "u1", 150)
    for replica in replicas:
        await replica.close()


async def test_a_call_in_flight_when_its_counter_was_lost_is_charged_its_real_usage(
    stores: tuple[aioredis.Redis, UsageLedger, LimitsCatalog]
) -> None:
    client, ledger, catalog = stores
    identity = await _user_with_day_quota(catalog, 1000)
    limiter = RateLimiter(client, catalog, ledger=ledger)
    running = await limiter.admit(identity, "u1", 100)  # reserved 100 in a counter seeded at 0
    await client.delete(_day_key(identity))  # lost (evicted) while the call runs

    await limiter.settle(running, 60, 0)  # it ends first: its usage is in the ledger, not charged to nothing
    assert await client.get(_day_key(identity)) is None
    await _ledger_holds(ledger, identity.tenant, 60)

    again = await limiter.admit(identity, "u1", 100)  # rebuilt: 60 from the ledger, plus 100 reserved
    assert int(await client.get(_day_key(identity))) == 160
    other = await limiter.admit(identity, "u1", 100)
    await client.delete(_day_key(identity))
    await _ledger_holds(ledger, identity.tenant, 40)  # `again` ended and was written to the ledger ...
    third = await limiter.admit(identity, "u1", 100)  # ... before this rebuild read it: 60 + 40, plus 100
    assert int(await client.get(_day_key(identity))) == 200
    await limiter.settle(again, 40, 0)  # counted twice (read, then charged): early, never late
    await limiter.settle(other, 30, 0)  # admitted before the rebuild, not in it: charged its real usage
    await limiter.settle(third, 50, 0)  # admitted after it: the difference to its reservation
    assert int(await client.get(_day_key(identity))) == 200 + 40 + 30 + (50 - 100)
    await limiter.close()


def test_period_bounds_match_the_limiters_period_names() -> None:
    assert period_bounds("2026-11-24") == (datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC))
    assert period_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("2028-02") == (datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC))

