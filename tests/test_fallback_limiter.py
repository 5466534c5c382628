"""The fallback limiter: while Redis is unreachable a ``fail_open`` tier is admitted by a per-replica, in-memory
limiter with the same per-minute rates and concurrency (GCRA), a ``fail_closed`` tier is refused UNAVAILABLE.
With a fake clock, a fake Redis that is down, a fake catalog and a fake ledger: no Redis, no MongoDB."""

from __future__ import annotations

import pytest
import redis.exceptions
from pymongo.errors import ServerSelectionTimeoutError

from moteur.gateway import limiter
from moteur.gateway.limiter import Admission, LocalLimiter, RateLimiter
from moteur.gateway.limits import LimitScope, LimitSet, Tier, scopes_of
from moteur.runtime.errors import ResourceExhausted, Unavailable
from moteur.runtime.identity import Identity

ALICE = Identity("acme", "alice", "standard", key_id="k1")
UNLIMITED = LimitSet()


class Clock:
    """``time.monotonic`` and ``time.time`` of the limiter module, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_795_000_000.0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(limiter, "time", fake)
    return fake


def _admission(key: LimitSet = UNLIMITED, user: LimitSet = UNLIMITED, tenant: LimitSet = UNLIMITED,
               tokens: int = 10, identity: Identity = ALICE) -> Admission:
    return Admission(scopes_of(identity, identity.user), [key, user, tenant], tokens)


def _violation(error: ResourceExhausted) -> str:
    (violation,) = error.violations
    return f"{violation.subject} {violation.description}"


def test_requests_per_minute_are_spaced_evenly_and_come_back_as_time_passes(clock: Clock) -> None:
    local = LocalLimiter()
    for _ in range(3):
        local.admit(_admission(user=LimitSet(requests_per_minute=3)), 1.0)
    with pytest.raises(ResourceExhausted) as refused:
        local.admit(_admission(user=LimitSet(requests_per_minute=3)), 1.0)
    assert refused.value.retry_after_seconds == pytest.approx(20.0)  # one request per 20 s comes back
    assert _violation(refused.value) == "tenant:acme/user:alice requests_per_minute limit of 3 reached"
    clock.advance(19.9)
    with pytest.raises(ResourceExhausted):
        local.admit(_admission(user=LimitSet(requests_per_minute=3)), 1.0)
    clock.advance(0.1)
    local.admit(_admission(user=LimitSet(requests_per_minute=3)), 1.0)


def test_tokens_per_minute_count_the_reservation_and_a_call_larger_than_the_minute_cannot_wait(clock: Clock) -> None:
    local = LocalLimiter()
    local.admit(_admission(key=LimitSet(tokens_per_minute=1000), tokens=400), 1.0)
    local.admit(_admission(key=LimitSet(tokens_per_minute=1000), tokens=400), 1.0)
    with pytest.raises(ResourceExhausted) as refused:
        local.admit(_admission(key=LimitSet(tokens_per_minute=1000), tokens=400), 1.0)
    assert refused.value.retry_after_seconds == pytest.approx(12.0)  # 200 tokens over, at 1000 a minute
    with pytest.raises(ResourceExhausted) as too_large:
        LocalLimiter().admit(_admission(key=LimitSet(tokens_per_minute=1000), tokens=1001), 1.0)
    assert too_large.value.retry_after_seconds is None and "needs about 1001 tokens" in too_large.value.message


def test_a_refused_admission_charges_none_of_its_scopes(clock: Clock) -> None:
    local = LocalLimiter()
    key = LimitSet(requests_per_minute=2)
    local.admit(_admission(key=key, tenant=LimitSet(requests_per_minute=1)), 1.0)
    with pytest.raises(ResourceExhausted, match="tenant is over its requests_per_minute"):
        local.admit(_admission(key=key, tenant=LimitSet(requests_per_minute=1)), 1.0)
    # the key spent one of its two requests, not two: the refused call did not charge it before the tenant said no
    local.admit(_admission(key=key), 1.0)
    with pytest.raises(ResourceExhausted, match="key:k1 is over"):
        local.admit(_admission(key=key), 1.0)


def test_concurrent_calls_are_capped_until_one_is_released(clock: Clock) -> None:
    local = LocalLimiter()
    one = LimitSet(concurrent_requests=1)
    first = _admission(user=one)
    local.admit(first, 1.0)
    with pytest.raises(ResourceExhausted) as refused:
        local.admit(_admission(user=one), 3.0)
    assert refused.value.retry_after_seconds == pytest.approx(1.5)  # half a typical call (3 s)
    assert _violation(refused.value) == "tenant:acme/user:alice concurrent_requests limit of 1 reached"
    local.release(first)
    local.release(first)  # released twice (settled, then released on an error): never below zero
    local.admit(_admission(user=one), 1.0)
    with pytest.raises(ResourceExhausted, match="concurrent_requests"):
        local.admit(_admission(user=one), 1.0)


def test_tenants_and_users_are_counted_apart_and_zero_is_unlimited(clock: Clock) -> None:
    local = LocalLimiter()
    once = LimitSet(requests_per_minute=1)
    local.admit(_admission(user=once), 1.0)
    local.admit(_admission(user=once, identity=Identity("acme", "bob", "standard", key_id="k2")), 1.0)
    local.admit(_admission(user=once, identity=Identity("globex", "alice", "standard", key_id="k3")), 1.0)
    with pytest.raises(ResourceExhausted):
        local.admit(_admission(user=once), 1.0)
    for _ in range(1000):
        local.admit(_admission(tokens=10**6), 1.0)


class DownRedis:
    """A Redis client whose every script call fails as an unreachable server does; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def register_script(self, script: str) -> DownRedis:
        return self

    async def __call__(self, keys: list[str], args: list[object]) -> list[object]:
        self.calls += 1
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


class MissingCounters(DownRedis):
    """A Redis that is up but lost the quota counters: the script answers "missing" (2) for the tenant's day."""

    async def __call__(self, keys: list[str], args: list[object]) -> list[object]:
        self.calls += 1
        return [2, 2, 4]  # scope 2 (the tenant), counter 4 (tokens_per_day)


class Catalog:
    def __init__(self, policy: str, limits: LimitSet) -> None:
        self._tier = Tier(priorities=["normal"], on_redis_down=policy)
        self._limits = limits

    def tier(self, name: str) -> Tier:
        return self._tier

    async def limits(self, scope: LimitScope, tier: str) -> LimitSet:
        return self._limits if scope.kind == "user" else LimitSet()


class DownLedger:
    async def spent(self, scope: LimitScope, start: object, end: object) -> object:
        raise ServerSelectionTimeoutError("no MongoDB")


async def test_a_fail_open_tier_is_admitted_locally_with_its_limits_while_redis_is_down(clock: Clock) -> None:
    redis_client = DownRedis()
    rate = RateLimiter(redis_client, Catalog("fail_open", LimitSet(requests_per_minute=2,
                                                                   concurrent_requests=1)))
    first = await rate.admit(ALICE, "alice", 10)
    assert first.local and redis_client.calls == 1
    with pytest.raises(ResourceExhausted, match="concurrent_requests"):
        await rate.admit(ALICE, "alice", 10)
    assert await rate.settle(first, 8, 0) == []  # a local admission is never charged to Redis ...
    assert redis_client.calls == 2  # (two admissions tried it, the settlement did not)
    second = await rate.admit(ALICE, "alice", 10)  # ... but its slot is freed
    await rate.release(second)
    with pytest.raises(ResourceExhausted, match="requests_per_minute"):  # two requests a minute, locally too
        await rate.admit(ALICE, "alice", 10)


async def test_a_fail_closed_tier_is_refused_unavailable_while_redis_is_down(clock: Clock) -> None:
    rate = RateLimiter(DownRedis(), Catalog("fail_closed", LimitSet()))
    with pytest.raises(Unavailable, match="the limits store \\(Redis\\) is unreachable and tier 'standard' fails"):
        await rate.admit(ALICE, "alice", 10)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_a_ledger_that_cannot_be_read_to_rebuild_a_quota_falls_back_like_redis(clock: Clock,
                                                                                     policy: str) -> None:
    rate = RateLimiter(MissingCounters(), Catalog(policy, LimitSet()), ledger=DownLedger())
    if policy == "fail_closed":
        with pytest.raises(Unavailable, match="the usage ledger \\(MongoDB\\), read to rebuild quotas, is unreach"):
            await rate.admit(ALICE, "alice", 10)
    else:
        assert (await rate.admit(ALICE, "alice", 10)).local
