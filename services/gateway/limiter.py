"""Rate limits and quotas, exact across gateway replicas: one Redis round trip per admission.

The Lua script (``limiter.lua``) checks every limit of every scope (key, user, tenant) and charges
them only if all pass, so concurrent replicas can never admit more than a limit allows. Tokens are
reserved from an estimate at admission and settled with the real usage (or released on failure);
concurrency slots are short leases renewed while the call runs, so a gateway that dies mid-call frees its
slots within one lease.

When Redis is unreachable the tier decides: ``fail_closed`` answers UNAVAILABLE; ``fail_open`` admits
through a per-replica in-memory limiter with the same limits (so a fleet of N replicas lets up to N
times the limit through until Redis is back).

Quota counters (tokens and cost per UTC day and month) survive Redis losing them. Redis keeps them on disk
(AOF, fsync every second), and a counter that is missing anyway (a restart without its data, a failover, an
eviction, or simply a new period) is rebuilt from the usage ledger before the admission decides: the script
reports the miss and charges nothing, the gateway sums the ledger for the quota's scope and period, seeds
the counter only if it is still absent (the first replica wins, a second one's seed is dropped), then admits
again. With counters present an admission stays one round trip.

The slack, i.e. how far the tokens admitted in a period may pass a quota (the tests measure it):

- always, the calls admitted last before the quota is reached may use more than their reservation (the
  input of the history, a longer answer): the quota is passed by at most the sum of ``real - reserved``
  over the calls running when it is reached (``concurrent_requests`` calls at most). One call at a time
  whose answer stays within its ``max_output_tokens`` reserves more than it uses: no slack.
- when a counter was lost, the calls running at that moment had their reservations in it: until they
  settle (they then charge their real usage), they are not counted; and a call that ended between the
  ledger read and its settlement is counted twice (refuses early, never late). So add the real usage of
  the calls that were running when the counter was lost.
- what Redis had not written to disk, or a replica had not received, when it crashed or failed over (up to
  a second of charges with AOF ``everysec`` on a machine crash; a process killed with -9 loses nothing) is
  not rebuilt: the counter is present, a little behind.
- a turn admitted by the ``fail_open`` fallback while Redis was unreachable is never charged to Redis.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from prometheus_client import Counter, Histogram
from pymongo.errors import PyMongoError

from moteur.gateway.limits import LimitsCatalog, LimitScope, LimitSet, scopes_of
from moteur.gateway.metrics import LIMITER_DECISIONS, LIMITER_FALLBACKS
from moteur.gateway.usage import TokenUsage
from moteur.runtime.errors import QuotaViolation, ResourceExhausted, Unavailable
from moteur.runtime.identity import Identity
from moteur.runtime.ids import new_id
from moteur.runtime.metrics import LATENCY_BUCKETS
from moteur.runtime.tasks import cancel_and_wait

log = structlog.get_logger("moteur.gateway.limiter")
_SCRIPT = (Path(__file__).with_name("limiter.lua")).read_text()
QUOTA_NAMES = ("tokens_per_day", "tokens_per_month", "cost_micro_usd_per_month", "cost_micro_usd_per_day")
_DAILY = ("tokens_per_day", "cost_micro_usd_per_day")
# The quota counters by their index among a scope's keys in limiter.lua, as its misses name them.
_COUNTERS = {4: "tokens_per_day", 5: "tokens_per_month", 6: "cost_micro_usd_per_month", 7: "cost_micro_usd_per_day"}
QUOTA_REBUILDS = Counter(
    "moteur_quota_counters_rebuilt_total",
    "Quota counters Redis had lost (restart without its data, failover, eviction) rebuilt from the usage ledger, "
    "by period (day, month). A new period's counter, started from an empty ledger, is not counted.",
    ["period"],
)
QUOTA_REBUILD_SECONDS = Histogram(
    "moteur_quota_rebuild_seconds", "Time an admission spent rebuilding missing quota counters (ledger read and seed).",
    buckets=LATENCY_BUCKETS,
)
_SEED_ATTEMPTS = 3  # admissions that find counters missing before the tier's fallback decides (see admit)
TYPICAL_CALL_SECONDS = 1.0  # a tenant's call time before any of its calls ended (concurrency RetryInfo)
_TYPICAL_WEIGHT = 0.2  # of each new call in the tenant's moving average


@dataclass(frozen=True, slots=True)
class Budget:
    """What is left after this admission (the x-ratelimit-* trailing metadata). -1: unlimited."""

    limit_requests: int = -1
    remaining_requests: int = -1
    reset_requests_ms: int = 0
    limit_tokens: int = -1
    remaining_tokens: int = -1
    reset_tokens_ms: int = 0

    def as_metadata(self) -> list[tuple[str, str]]:
        pairs = []
        if self.limit_requests >= 0:
            pairs += [("x-ratelimit-limit-requests", str(self.limit_requests)),
                      ("x-ratelimit-remaining-requests", str(self.remaining_requests)),
                      ("x-ratelimit-reset-requests", f"{self.reset_requests_ms / 1000:.3f}s")]
        if self.limit_tokens >= 0:
            pairs += [("x-ratelimit-limit-tokens", str(self.limit_tokens)),
                      ("x-ratelimit-remaining-tokens", str(self.remaining_tokens)),
                      ("x-ratelimit-reset-tokens", f"{self.reset_tokens_ms / 1000:.3f}s")]
        return pairs


def _lease_id() -> str:
    """``<admitted at, ms>:<id>``: the script reads when a call started from its lease."""
    return f"{int(time.time() * 1000)}:{new_id()}"


@dataclass(slots=True)
class Admission:
    scopes: list[LimitScope]
    limits: list[LimitSet]
    reserved_tokens: int
    lease_id: str = field(default_factory=_lease_id)
    budget: Budget = field(default_factory=Budget)
    local: bool = False  # admitted by the per-replica fallback while Redis was down
    admitted_us: int = 0  # Redis time of the admission (us): settling, whether a counter was seeded since
    settled: bool = False
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class QuotaUse:
    scope: LimitScope
    limit: str  # one of QUOTA_NAMES
    used: int
    limit_value: int
    period: str  # "2026-11-24" or "2026-11"


class _Periods(NamedTuple):
    """This UTC day and month: seconds to their ends (the quota keys' TTLs) and their names (key suffixes)."""

    day_ttl: int
    month_ttl: int
    day: str
    month: str

    def of(self, quota_name: str) -> str:
        """The period a quota counts in."""
        return self.day if quota_name in _DAILY else self.month


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """Where a period named as the limiter names it ("2026-11-24", "2026-11") starts and ends, UTC."""
    if len(period) == len("2026-11-24"):
        start = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    return start, (start + timedelta(days=32)).replace(day=1)


class QuotaLedger(Protocol):
    """Where quota counters are rebuilt from: the usage a scope recorded in a period (the usage ledger)."""

    async def spent(self, scope: LimitScope, start: datetime, end: datetime) -> TokenUsage: ...


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """A quota counter this replica seeded from the ledger."""

    scope: LimitScope
    limit: str  # one of QUOTA_NAMES
    period: str
    value: int  # tokens or micro-USD


def _periods() -> _Periods:
    return _periods_at(int(time.time()))


@functools.lru_cache(maxsize=2)  # every admission and settlement within one second shares them
def _periods_at(second: int) -> _Periods:
    now = datetime.fromtimestamp(second, UTC)
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp() + 86400
    last = calendar.monthrange(now.year, now.month)[1]
    month_end = datetime(now.year, now.month, last, tzinfo=UTC).timestamp() + 86400
    return _Periods(math.ceil(day_end - second), math.ceil(month_end - second), now.strftime("%Y-%m-%d"),
                    now.strftime("%Y-%m"))


class RateLimiter:
    """Admits, settles and releases calls against every limit of their scopes (see the module's docstring).

    ``ledger`` rebuilds lost quota counters; without one (benchmarks) a missing counter starts from zero.
    """

    def __init__(self, client: aioredis.Redis, catalog: LimitsCatalog, lease_seconds: float = 30.0,
                 ledger: QuotaLedger | None = None) -> None:
        self._redis = client
        self._script = client.register_script(_SCRIPT)
        self._catalog = catalog
        self._ledger = ledger
        self._lease_seconds = lease_seconds
        self._local = LocalLimiter()
        self._typical_call: dict[str, float] = {}  # tenant -> moving average of its call times (s)
        self._held: dict[str, Admission] = {}  # lease id -> a call holding concurrency slots, renewed
        self._renewer: asyncio.Task[None] | None = None  # one for every call, started by the first

    async def admit(self, identity: Identity, user: str, tokens: int) -> Admission:
        scopes = scopes_of(identity, user)
        limits = [await self._catalog.limits(scope, identity.tier) for scope in scopes]
        admission = Admission(scopes, limits, tokens)
        try:
            reply = await self._decide(admission, tokens)
        except redis.exceptions.RedisError as exc:
            return self._fallback(identity, admission, exc)
        except PyMongoError as exc:
            return self._fallback(identity, admission, exc, "the usage ledger (MongoDB), read to rebuild quotas,")
        if reply[0] == 1:
            LIMITER_DECISIONS.labels("admitted").inc()
            admission.budget = _budget(limits, reply[1:5])
            admission.admitted_us = int(reply[5])
            if any(x.concurrent_requests for x in limits):
                self._hold(admission)
            return admission
        _, index, limit_name, retry_ms, limit_value = reply[:5]
        name, scope = _text(limit_name), scopes[int(index)]
        LIMITER_DECISIONS.labels(f"refused:{name}").inc()
        refusal = _refusal(scope, name, int(retry_ms), int(limit_value), tokens)
        refusal.metadata = _budget(limits, reply[5:9]).as_metadata()  # a refusal tells the budget too
        if name in QUOTA_NAMES:  # a quota that refuses work is at 100 % for alerting, crossed or not
            refusal.quota_use = QuotaUse(scope, name, int(limit_value), int(limit_value), _periods().of(name))
        raise refusal

    async def _decide(self, admission: Admission, tokens: int) -> list[int | bytes]:
        """The script's decision, once the quota counters it found missing are rebuilt (the miss path)."""
        for _ in range(_SEED_ATTEMPTS):
            periods = _periods()
            reply = await self._run("admit", admission, tokens, 0, periods)
            if reply[0] != 2:
                return reply
            await self.rebuild(admission, periods, _misses(reply[1:]))
        # seeded, then gone again before the admission ran: evicted as soon as written (Redis out of memory)
        raise redis.exceptions.RedisError("quota counters vanish as soon as they are seeded")

    async def settle(self, admission: Admission, tokens: int, cost_micro_usd: int) -> list[QuotaUse]:
        """Charge the real usage instead of the reservation and free the concurrency slot."""
        if admission.settled:
            return []
        admission.settled = True
        self._held.pop(admission.lease_id, None)
        self._record_call_time(admission)
        if admission.local:
            self._local.release(admission)
            return []
        try:
            reply = await self._run("settle", admission, tokens - admission.reserved_tokens, cost_micro_usd,
                                    real_tokens=tokens)
        except redis.exceptions.RedisError as exc:
            log.warning("limiter.settle_failed", error=str(exc))  # the lease expires on its own
            return []
        periods = _periods()
        uses = []
        n = len(QUOTA_NAMES)
        for i, (scope, limits) in enumerate(zip(admission.scopes, admission.limits, strict=True)):
            values = [int(v) for v in reply[1 + n * i: 1 + n * (i + 1)]]
            for name, used in zip(QUOTA_NAMES, values, strict=True):
                if getattr(limits, name) > 0:
                    uses.append(QuotaUse(scope, name, used, getattr(limits, name), periods.of(name)))
        return uses

    async def close(self) -> None:
        await cancel_and_wait(self._renewer)

    def _hold(self, admission: Admission) -> None:
        self._held[admission.lease_id] = admission
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_held(), name="lease-renewal")

    async def _renew_held(self) -> None:
        """Every third of a lease, renew the leases of the calls still running (a dead gateway stops)."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            for admission in list(self._held.values()):
                if admission.settled:
                    continue
                try:
                    await self._run("renew", admission, 0, 0)
                except redis.exceptions.RedisError as exc:  # the next round may reach it: a lease is 3 rounds
                    log.warning("limiter.renew_failed", error=str(exc))
                    break

    def _typical_call_seconds(self, tenant: str) -> float:
        return self._typical_call.get(tenant, TYPICAL_CALL_SECONDS)

    def _record_call_time(self, admission: Admission) -> None:
        tenant = admission.scopes[-1].tenant
        before = self._typical_call_seconds(tenant)
        self._typical_call[tenant] = before + _TYPICAL_WEIGHT * (time.monotonic() - admission.started - before)

    async def release(self, admission: Admission) -> None:
        """A call that failed: give its token reservation back and free its slot."""
        await self.settle(admission, 0, 0)

    async def rebuild(self, admission: Admission, periods: _Periods, misses: list[tuple[int, int]]) -> list[Rebuilt]:
        """Seed the missing quota counters of an admission's scopes from the ledger, each only if still
        absent; returns those this call seeded (another replica may have seeded the others first)."""
        started = time.monotonic()
        wanted = list({(index, periods.of(_COUNTERS[counter])) for index, counter in misses})
        spent = dict(zip(wanted, await asyncio.gather(*(self._spent(admission.scopes[i], p) for i, p in wanted)),
                         strict=True))
        seeds = [[-1] * 4 for _ in admission.scopes]
        for index, counter in misses:
            name = _COUNTERS[counter]
            usage = spent[(index, periods.of(name))]
            seeds[index][counter - 4] = usage.cost_micro_usd if name.startswith("cost") else usage.total_tokens
        reply = await self._run("seed", admission, 0, 0, periods, seeds=seeds)
        elapsed = time.monotonic() - started
        QUOTA_REBUILD_SECONDS.observe(elapsed)
        rebuilt = []
        for index, counter in misses:
            if int(reply[index * 4 + counter - 4]):
                name, scope = _COUNTERS[counter], admission.scopes[index]
                rebuilt.append(Rebuilt(scope, name, periods.of(name), seeds[index][counter - 4]))
        for seeded in rebuilt:
            if seeded.value:  # a counter of a new period starts from an empty ledger: nothing was lost
                kind = "day" if seeded.limit in _DAILY else "month"
                QUOTA_REBUILDS.labels(kind).inc()
                log.info("limiter.quota_rebuilt", tenant=seeded.scope.tenant, scope=seeded.scope.kind,
                         limit=seeded.limit, period=seeded.period, value=seeded.value, seconds=round(elapsed, 4))
        return rebuilt

    async def _spent(self, scope: LimitScope, period: str) -> TokenUsage:
        if self._ledger is None:
            return TokenUsage()
        return await self._ledger.spent(scope, *period_bounds(period))

    async def _run(self, op: str, admission: Admission, tokens: int, cost: int, periods: _Periods | None = None,
                   real_tokens: int = 0, seeds: list[list[int]] | None = None) -> list[int | bytes]:
        day_ttl, month_ttl, day, month = periods or _periods()
        typical_ms = int(self._typical_call_seconds(admission.scopes[-1].tenant) * 1000)
        keys: list[str] = []
        args: list[int | str] = [op, len(admission.scopes), tokens, admission.lease_id, int(self._lease_seconds * 1000),
                          day_ttl, month_ttl, cost, typical_ms, admission.admitted_us, real_tokens]
        for i, (scope, limits) in enumerate(zip(admission.scopes, admission.limits, strict=True)):
            base = f"rl:{{{scope.tenant}}}:{scope.name}"  # {tenant}: one hash slot in Redis Cluster
            quotas = [f"{base}:day:{day}", f"{base}:month:{month}", f"{base}:cost:{month}", f"{base}:cost:{day}"]
            keys += [f"{base}:req", f"{base}:tok", f"{base}:conc", *quotas, *(f"{q}:seeded" for q in quotas)]
            args += [limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_requests,
                     *(seeds[i] if seeds else (limits.tokens_per_day, limits.tokens_per_month,
                                               limits.cost_micro_usd_per_month, limits.cost_micro_usd_per_day))]
        return await self._script(keys=keys, args=args)

    def _fallback(self, identity: Identity, admission: Admission, exc: Exception,
                  store: str = "the limits store (Redis)") -> Admission:
        policy = self._catalog.tier(identity.tier).on_redis_down
        LIMITER_FALLBACKS.labels(policy).inc()
        log.warning("limiter.redis_unavailable", policy=policy, store=store, error=str(exc))
        if policy == "fail_closed":
            raise Unavailable(f"{store} is unreachable and tier {identity.tier!r} fails closed; retry shortly")
        self._local.admit(admission, self._typical_call_seconds(identity.tenant))
        admission.local = True
        return admission


def _misses(reply: list[int | bytes]) -> list[tuple[int, int]]:
    """The script's missing counters, ``(scope index, counter index)`` pairs."""
    values = [int(v) for v in reply]
    return list(zip(values[::2], values[1::2], strict=True))


def _budget(limits: list[LimitSet], reply: list[int | bytes]) -> Budget:
    remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms = (int(v) for v in reply)
    return Budget(
        limit_requests=_tightest(limits, "requests_per_minute"), remaining_requests=remaining_requests,
        reset_requests_ms=reset_requests_ms, limit_tokens=_tightest(limits, "tokens_per_minute"),
        remaining_tokens=remaining_tokens, reset_tokens_ms=reset_tokens_ms,
    )


def _tightest(limits: list[LimitSet], name: str) -> int:
    values = [getattr(x, name) for x in limits if getattr(x, name) > 0]
    return min(values) if values else -1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(scope: LimitScope, limit: str, retry_ms: int, limit_value: int, tokens: int) -> ResourceExhausted:
    violation = QuotaViolation(scope.subject, f"{limit} limit of {limit_value} reached")
    if retry_ms < 0:  # this one call is larger than the whole per-minute budget: waiting will not help
        return ResourceExhausted(
            f"this request needs about {tokens} tokens, more than the {limit} limit of {limit_value} of "
            f"{scope.name}; ask for fewer output tokens (max_output_tokens) or a higher limit",
            violations=[violation],
        )
    return ResourceExhausted(
        f"{scope.name} is over its {limit} limit of {limit_value}; retry in {retry_ms / 1000:.2f} s",
        retry_after_seconds=retry_ms / 1000, violations=[violation],
    )


class LocalLimiter:
    """The per-replica fallback while Redis is down: the same GCRA rates and concurrency, in memory.

    Quotas are not enforced here (their counters live in Redis); they resume when Redis is back.
    """

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}

    def admit(self, admission: Admission, typical_call_seconds: float) -> None:
        now = time.monotonic() * 1000
        charges: list[tuple[str, float]] = []
        for scope, limits in zip(admission.scopes, admission.limits, strict=True):
            for kind, rate, cost in (("req", limits.requests_per_minute, 1),
                                     ("tok", limits.tokens_per_minute, admission.reserved_tokens)):
                if rate <= 0 or cost <= 0:
                    continue
                key = f"{scope.tenant}:{scope.name}:{kind}"
                tat = max(self._tats.get(key, now), now) + cost * 60000 / rate
                if tat - now > 60000.001:
                    retry = math.ceil(tat - now - 60000)
                    raise _refusal(scope, f"{'requests' if kind == 'req' else 'tokens'}_per_minute",
                                   retry if cost <= rate else -1, rate, admission.reserved_tokens)
                charges.append((key, tat))
            slots = f"{scope.tenant}:{scope.name}"
            if limits.concurrent_requests and self._in_flight.get(slots, 0) >= limits.concurrent_requests:
                # without the calls' start times here, a slot is expected within half a typical call
                retry_ms = max(50, round(typical_call_seconds * 500))
                raise _refusal(scope, "concurrent_requests", retry_ms, limits.concurrent_requests, 0)
        for key, tat in charges:
            self._tats[key] = tat
        for scope in admission.scopes:
            slots = f"{scope.tenant}:{scope.name}"
            self._in_flight[slots] = self._in_flight.get(slots, 0) + 1

    def release(self, admission: Admission) -> None:
        for scope in admission.scopes:
            slots = f"{scope.tenant}:{scope.name}"
            self._in_flight[slots] = max(0, self._in_flight.get(slots, 0) - 1)
