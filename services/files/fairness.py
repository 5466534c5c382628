"""Who gets the next free render worker: a round-robin queue across tenants with a per-tenant share.

Invariants :class:`FairQueue` keeps:

- a tenant is handed a job only while it runs fewer than its share, ``max(1, slots // active tenants)``; a
  tenant is active while it has work waiting or running, and for ``grace_seconds`` after its last job ends
  (so a tenant rendering one file after another keeps its share between two calls);
- among tenants under their share, the one served longest ago goes first; one tenant's jobs run in the
  order they came;
- a tenant has at most ``per_tenant`` jobs waiting: one more is refused (:class:`QueueFull`);
- a stale job (its caller gone: deadline passed, call cancelled) is dropped when it reaches the front,
  never handed out.

Running jobs are not preempted: a tenant over its share (it had every worker before others came) gives
workers back as its jobs end; meanwhile :meth:`starving` tells the pool that a tenant with nothing running
is waiting behind it (the pool then starts an extra worker). Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The tenant already has ``per_tenant`` jobs waiting."""


class FairQueue(Generic[T]):
    def __init__(self, slots: int, per_tenant: int, *, stale: Callable[[T], bool],
                 on_drop: Callable[[T], None] = lambda _item: None, grace_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = slots
        self._per_tenant = per_tenant
        self._stale = stale
        self._on_drop = on_drop
        self._grace = grace_seconds
        self._clock = clock
        self._waiting: OrderedDict[str, deque[T]] = OrderedDict()  # rotation order: served longest ago first
        self._running: dict[str, int] = {}
        self._last_done: dict[str, float] = {}

    @property
    def depth(self) -> int:
        """Jobs waiting, stale ones included until they are dropped."""
        return sum(len(items) for items in self._waiting.values())

    def admit(self, tenant: str, item: T) -> None:
        """Queue ``item`` for ``tenant``, behind its other jobs; QueueFull when it has too many waiting."""
        waiting = self._waiting.setdefault(tenant, deque())
        if len(waiting) >= self._per_tenant:
            self._drop_stale(waiting)
        if len(waiting) >= self._per_tenant:
            raise QueueFull(tenant)
        waiting.append(item)

    def take(self) -> tuple[str, T] | None:
        """The next job to run and its tenant, counted as running; None when no tenant may run one now."""
        for tenant in list(self._waiting):
            waiting = self._waiting[tenant]
            self._drop_stale(waiting)
            if not waiting:
                del self._waiting[tenant]
                continue
            if self._running.get(tenant, 0) >= self.share():
                continue
            item = waiting.popleft()
            self._running[tenant] = self._running.get(tenant, 0) + 1
            self._waiting.move_to_end(tenant)
            if not waiting:
                del self._waiting[tenant]
            return tenant, item
        return None

    def done(self, tenant: str) -> None:
        """A job ``take`` handed out for ``tenant`` has ended."""
        left = self._running.get(tenant, 0) - 1
        if left > 0:
            self._running[tenant] = left
        else:
            self._running.pop(tenant, None)
        self._last_done[tenant] = self._clock()

    def starving(self) -> bool:
        """A tenant has work waiting and nothing running while another runs more than its share: one more
        worker would serve it at once, instead of after the other tenant's job ends."""
        share = self.share()
        if not any(running > share for running in self._running.values()):
            return False
        return any(not self._running.get(tenant) and any(not self._stale(item) for item in waiting)
                   for tenant, waiting in self._waiting.items())

    def share(self) -> int:
        """How many jobs one tenant may run at once now."""
        return max(1, self.slots // max(1, len(self.active_tenants())))

    def active_tenants(self) -> set[str]:
        now = self._clock()
        for tenant, at in list(self._last_done.items()):
            if now - at > self._grace:
                del self._last_done[tenant]
        return {*self._waiting, *self._running, *self._last_done}

    def _drop_stale(self, waiting: deque[T]) -> None:
        fresh: list[T] = []
        for item in waiting:
            if self._stale(item):
                self._on_drop(item)
            else:
                fresh.append(item)
        if len(fresh) != len(waiting):
            waiting.clear()
            waiting.extend(fresh)
