"""Calls in flight per key, each key under its own limit: how one tenant's burst of slow tool calls is kept
from taking the calls another tenant needs.

The registry keeps two: one keyed by tenant (the tenant's limit from the policy), one keyed by (tenant, tool)
(the tool's ``max_concurrency``), so a tenant that fills a built-in's slots fills only its own.
"""

from __future__ import annotations

from collections.abc import Hashable


class Slots:
    """Slots taken per key.

    Invariant: a key never holds more slots than the limit given when each was taken (a lowered limit lets
    the calls already in flight finish), and a key holding none has no entry, so the map only ever holds
    the keys with calls in flight, never every tenant seen since start. Used from one event loop: nothing
    awaits between the check and the count, so there is no lock.
    """

    def __init__(self) -> None:
        self._taken: dict[Hashable, int] = {}

    def taken(self, key: Hashable) -> int:
        return self._taken.get(key, 0)

    def try_take(self, key: Hashable, limit: int) -> bool:
        """Takes one of ``key``'s slots if it holds fewer than ``limit``; False, and nothing taken, otherwise.
        Every True is to be matched by one :meth:`give_back`."""
        held = self._taken.get(key, 0)
        if held >= limit:
            return False
        self._taken[key] = held + 1
        return True

    def give_back(self, key: Hashable) -> None:
        held = self._taken[key] - 1
        if held:
            self._taken[key] = held
        else:
            del self._taken[key]
