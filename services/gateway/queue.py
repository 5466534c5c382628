"""The request buffer: a bounded priority queue, fair between tenants, that sheds overload.

Invariants, kept by every method (all run on the event loop, so no locks):
- at most ``capacity`` turns are dispatched (in flight to the models) at once, and only critical turns
  may use the last ``critical_reserve`` of those slots;
- a turn is dispatched before any turn of a lower priority level; within a level tenants take turns
  (one FIFO per tenant, served weighted round-robin: a tenant of weight w gets w turns per round), so a
  noisy tenant cannot starve a quiet one;
- at most ``max_queued`` turns wait in all, ``max_queued_per_tenant`` per tenant; when full, an arriving
  turn evicts the newest waiting turn of the lowest level below its own, or is refused;
- a waiting turn whose deadline passes, or whose caller goes away, leaves the queue at once;
- dispatch is event-driven: a released slot hands itself to the next waiter's future, no polling.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from moteur.gateway.metrics import QUEUE_DEPTH, QUEUE_EXPIRED, QUEUE_SHED, QUEUE_WAIT
from moteur.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable

LEVELS = ("critical", "high", "normal", "low", "batch")  # index = dispatch order
# Every level is exported from the start, at 0: dashboards and the autoscaler see the series before a
# turn ever waits.
for _level in LEVELS:
    QUEUE_DEPTH.labels(_level)


@dataclass(eq=False)
class _Waiter:
    tenant: str
    level: int
    enqueued: float
    weight: int = 1
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True, slots=True)
class Slot:
    """A dispatched turn; give it back with :meth:`AdmissionQueue.release`."""

    level: int
    wait_seconds: float


class AdmissionQueue:
    def __init__(
        self, capacity: int, max_queued: int, max_queued_per_tenant: int, critical_reserve: int = 0,
        max_wait_seconds: float = 30.0,
    ) -> None:
        if not 0 <= critical_reserve < capacity:
            raise ValueError("critical_reserve must leave at least one slot for other levels")
        self.capacity = capacity
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self.critical_reserve = critical_reserve
        self.max_wait_seconds = max_wait_seconds
        self.in_flight = 0
        self._levels: list[OrderedDict[str, deque[_Waiter]]] = [OrderedDict() for _ in LEVELS]
        self._per_tenant: dict[str, int] = {}
        self._queued = 0
        self._draining = False
        self._served_this_round: dict[tuple[int, str], int] = {}
        self._service_seconds = 1.0  # moving average of how long a slot is held: for RetryInfo

    @property
    def queued(self) -> int:
        return self._queued

    async def acquire(self, tenant: str, level: int, timeout: float | None = None, weight: int = 1) -> Slot:
        """Wait for a slot (or take one at once); raises when shed, expired or draining."""
        if self._draining:
            raise Unavailable("this gateway is shutting down; retry on another replica")
        started = time.monotonic()
        if self._may_dispatch(level) and not self._waiting_at_or_above(level):
            self.in_flight += 1
            QUEUE_WAIT.labels(LEVELS[level]).observe(0)
            return Slot(level, 0.0)
        waiter = self._enqueue(tenant, level, started, weight)
        wait = self.max_wait_seconds if timeout is None else min(timeout, self.max_wait_seconds)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), max(wait, 0))
        except TimeoutError:
            if waiter.future.done() and waiter.future.exception() is None:
                return self._dispatched(waiter)  # dispatched in the same instant: keep the slot
            self._remove(waiter)
            QUEUE_EXPIRED.labels(LEVELS[level]).inc()
            if timeout is not None and timeout <= self.max_wait_seconds:
                raise DeadlineExceeded(f"the deadline passed after {time.monotonic() - started:.2f} s in the "
                                       "queue, before a model was free; allow more time or retry later") from None
            raise self._refusal(level, f"no model was free within {self.max_wait_seconds:g} s") from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(time.monotonic())  # the slot came as the caller left: pass it on
            else:
                self._remove(waiter)
            raise
        return self._dispatched(waiter)

    def check_room(self, tenant: str, level: int) -> None:
        """Refuse now, before any other work, a turn that :meth:`acquire` would shed at once."""
        if self._draining:
            raise Unavailable("this gateway is shutting down; retry on another replica")
        if self._may_dispatch(level) and not self._waiting_at_or_above(level):
            return
        if self._per_tenant.get(tenant, 0) >= self.max_queued_per_tenant:
            QUEUE_SHED.labels(LEVELS[level], "tenant_full").inc()
            raise self._refusal(level, f"tenant {tenant!r} already has {self.max_queued_per_tenant} turns waiting")
        if self._queued >= self.max_queued and not any(self._levels[i] for i in range(level + 1, len(LEVELS))):
            QUEUE_SHED.labels(LEVELS[level], "full").inc()
            raise self._refusal(level, f"the queue is full ({self.max_queued} turns waiting)")

    def release(self, started: float | None = None) -> None:
        """A dispatched turn ended (whatever its outcome): its slot goes to the next waiter."""
        self.in_flight -= 1
        if started is not None:
            self._service_seconds = 0.9 * self._service_seconds + 0.1 * (time.monotonic() - started)
        self._dispatch()

    def resize(self, capacity: int, critical_reserve: int) -> None:
        """New downstream capacity (the registry changed): turns in flight finish, waiters fill new room."""
        if not 0 <= critical_reserve < capacity:
            raise ValueError("critical_reserve must leave at least one slot for other levels")
        self.capacity, self.critical_reserve = capacity, critical_reserve
        self._dispatch()

    def drain(self) -> int:
        """Stop accepting; hand every waiting turn back with UNAVAILABLE. Returns how many."""
        self._draining = True
        handed_back = 0
        for level, tenants in enumerate(self._levels):
            for queue in tenants.values():
                for waiter in queue:
                    if not waiter.future.done():
                        waiter.future.set_exception(Unavailable(
                            "this gateway is shutting down before your turn came; retry on another replica"))
                        handed_back += 1
            tenants.clear()
            QUEUE_DEPTH.labels(LEVELS[level]).set(0)
        self._per_tenant.clear()
        self._queued = 0
        return handed_back

    # -- internals ---------------------------------------------------------------------------------
    def _may_dispatch(self, level: int) -> bool:
        limit = self.capacity if level == 0 else self.capacity - self.critical_reserve
        return self.in_flight < limit

    def _waiting_at_or_above(self, level: int) -> bool:
        return any(self._levels[i] for i in range(level + 1))

    def _enqueue(self, tenant: str, level: int, now: float, weight: int) -> _Waiter:
        if self._per_tenant.get(tenant, 0) >= self.max_queued_per_tenant:
            QUEUE_SHED.labels(LEVELS[level], "tenant_full").inc()
            raise self._refusal(level, f"tenant {tenant!r} already has {self.max_queued_per_tenant} turns waiting")
        if self._queued >= self.max_queued and not self._evict_below(level):
            QUEUE_SHED.labels(LEVELS[level], "full").inc()
            raise self._refusal(level, f"the queue is full ({self.max_queued} turns waiting)")
        waiter = _Waiter(tenant, level, now, max(1, weight))
        self._levels[level].setdefault(tenant, deque()).append(waiter)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        self._queued += 1
        QUEUE_DEPTH.labels(LEVELS[level]).inc()
        return waiter

    def _evict_below(self, level: int) -> bool:
        """Make room by shedding the newest waiter of the lowest level below ``level``."""
        for lower in range(len(LEVELS) - 1, level, -1):
            tenants = self._levels[lower]
            if not tenants:
                continue
            tenant = max(tenants, key=lambda t: tenants[t][-1].enqueued)  # the newest waiter of that level
            victim = tenants[tenant][-1]
            self._remove(victim)
            QUEUE_SHED.labels(LEVELS[lower], "evicted").inc()
            victim.future.set_exception(self._refusal(lower, "a higher-priority turn took your place in the queue"))
            return True
        return False

    def _remove(self, waiter: _Waiter) -> None:
        tenants = self._levels[waiter.level]
        queue = tenants.get(waiter.tenant)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del tenants[waiter.tenant]
        self._per_tenant[waiter.tenant] -= 1
        if not self._per_tenant[waiter.tenant]:
            del self._per_tenant[waiter.tenant]
        self._queued -= 1
        QUEUE_DEPTH.labels(LEVELS[waiter.level]).dec()

    def _dispatch(self) -> None:
        for level, tenants in enumerate(self._levels):
            while tenants and self._may_dispatch(level):
                tenant, queue = next(iter(tenants.items()))  # the tenant whose turn it is
                waiter = queue[0]
                self._remove(waiter)
                served = self._served_this_round.get((level, tenant), 0) + 1
                if tenant not in tenants or served >= waiter.weight:
                    self._served_this_round.pop((level, tenant), None)
                    if tenant in tenants:
                        tenants.move_to_end(tenant)  # its share of this round is used: next tenant
                else:
                    self._served_this_round[(level, tenant)] = served
                self.in_flight += 1
                waiter.future.set_result(None)
            if tenants:
                return  # strict priority: nothing below waits ahead of this level

    def _dispatched(self, waiter: _Waiter) -> Slot:
        waited = time.monotonic() - waiter.enqueued
        QUEUE_WAIT.labels(LEVELS[waiter.level]).observe(waited)
        return Slot(waiter.level, waited)

    def _refusal(self, level: int, why: str) -> ResourceExhausted:
        ahead = sum(len(q) for i in range(level + 1) for q in self._levels[i].values())
        retry = max(0.05, (ahead + 1) * self._service_seconds / max(1, self.capacity))
        return ResourceExhausted(f"overloaded: {why}; retry in {retry:.2f} s", retry_after_seconds=retry)
