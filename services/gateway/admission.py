"""The gateway's front door for a chat turn: may this caller use this priority, do its limits and
quotas admit the turn, and when is there a model free for it (the queue)? Settles or releases what was
reserved when the turn ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from moteur.gateway.alerts import AlertLog
from moteur.gateway.dispatch import DispatchPools
from moteur.gateway.limiter import Admission, QuotaUse, RateLimiter
from moteur.gateway.limits import PRIORITY_NAMES, LimitsCatalog
from moteur.gateway.metrics import ADMISSIONS
from moteur.gateway.turns import TurnInput, TurnResult
from moteur.gateway.usage import TokenUsage
from moteur.runtime.context import time_remaining
from moteur.runtime.errors import MoteurError, PermissionDenied, ResourceExhausted
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class AdmittedTurn:
    control: AdmissionControl
    admission: Admission
    queue_wait_seconds: float

    def metadata(self) -> list[tuple[str, str]]:
        """The remaining budget and the queue wait, for the answer's trailing metadata."""
        wait = ("x-moteur-queue-wait-ms", f"{self.queue_wait_seconds * 1000:.1f}")
        return [*self.admission.budget.as_metadata(), wait]

    async def settle(self, tokens: int, cost_micro_usd: int) -> None:
        await self.control.settle(self.admission, tokens, cost_micro_usd)

    async def settle_turn(self, result: TurnResult) -> None:
        """Settle with what the turn used (a replayed answer used nothing)."""
        usage = result.usage if not result.replay else TokenUsage()
        await self.settle(usage.total_tokens, usage.cost_micro_usd)


# The answer's length when the caller set none, for the token reservation; settled with the real count.
DEFAULT_OUTPUT_ESTIMATE = 256


def estimate_tokens(message: str, max_output_tokens: int) -> int:
    """Input at one token per four characters (history is not known yet), plus the answer's ceiling."""
    return (len(message) + 3) // 4 + (max_output_tokens or DEFAULT_OUTPUT_ESTIMATE)


def estimate_turn(turn: TurnInput) -> int:
    """:func:`estimate_tokens` of a turn: its message, and the history a stateless turn brings along."""
    given = sum(len(m.content) for m in turn.history or ())
    return estimate_tokens(turn.message, turn.max_output_tokens) + (given + 3) // 4


class AdmissionControl:
    def __init__(self, catalog: LimitsCatalog, limiter: RateLimiter, alerts: AlertLog, pools: DispatchPools) -> None:
        self.catalog = catalog
        self.alerts = alerts
        self.pools = pools
        self._limiter = limiter

    def check_priority(self, identity: Identity, priority: int) -> None:
        name = PRIORITY_NAMES[priority - common_pb2.PRIORITY_CRITICAL]
        allowed = self.catalog.tier(identity.tier).priorities
        if name not in allowed:
            raise PermissionDenied(
                f"tier {identity.tier!r} may use priorities {', '.join(allowed)}, not {name!r}"
            )

    async def admit(self, identity: Identity, user: str, priority: int, tokens: int, pool: str | None) -> Admission:
        """The caller's limits and quotas for a call of ``tokens``, and room in ``pool``'s queue (None: a call
        that takes no model slot, as an embedding)."""
        try:
            self.check_priority(identity, priority)
            # A turn the queue would shed is refused before it costs a Redis round trip: under overload the
            # refusal must be the cheapest answer the gateway gives.
            if pool is not None:
                self.pools.queue(pool).check_room(identity.tenant, priority - common_pb2.PRIORITY_CRITICAL)
            admission = await self._limiter.admit(identity, user, tokens)
        except MoteurError as exc:
            ADMISSIONS.labels(identity.tenant, exc.code.name.lower()).inc()
            if isinstance(exc, ResourceExhausted) and isinstance(exc.quota_use, QuotaUse):
                await self.alerts.record([exc.quota_use], thresholds=(100,))
            raise
        ADMISSIONS.labels(identity.tenant, "admitted").inc()
        return admission

    @contextlib.asynccontextmanager
    async def turn(
        self, identity: Identity, user: str, priority: int, tokens: int, timeout: float | None, pool: str
    ) -> AsyncIterator[AdmittedTurn]:
        """Admit a turn and wait for its slot in ``pool``; the slot is released and, unless the turn
        settled, its reservation too, however the block ends (answer, error, cancellation)."""
        queue = self.pools.queue(pool)
        admission = await self.admit(identity, user, priority, tokens, pool)
        try:
            slot = await queue.acquire(
                identity.tenant, priority - common_pb2.PRIORITY_CRITICAL, timeout,
                weight=self.catalog.tier(identity.tier).weight,
            )
            dispatched = time.monotonic()
            try:
                yield AdmittedTurn(self, admission, slot.wait_seconds)
            finally:
                queue.release(dispatched)
        finally:
            if not admission.settled:
                await asyncio.shield(self.release(admission))

    @contextlib.asynccontextmanager
    async def chat_turn(self, identity: Identity, turn: TurnInput) -> AsyncIterator[AdmittedTurn]:
        """:meth:`turn` for a chat turn, in the pool of its request type and model, within the call's deadline."""
        pool = self.pools.key(turn.request_type, turn.model_hint)
        estimate = estimate_turn(turn)
        async with self.turn(identity, turn.user, turn.priority, estimate, time_remaining(), pool) as admitted:
            yield admitted

    @contextlib.asynccontextmanager
    async def call(self, identity: Identity, user: str, tokens: int) -> AsyncIterator[AdmittedTurn]:
        """Admit a call that takes no model slot (embeddings): limits and quotas only; its reservation is given
        back unless the call settled."""
        admission = await self.admit(identity, user, common_pb2.PRIORITY_NORMAL, tokens, None)
        try:
            yield AdmittedTurn(self, admission, 0.0)
        finally:
            if not admission.settled:
                await asyncio.shield(self.release(admission))

    async def settle(self, admission: Admission, tokens: int, cost_micro_usd: int) -> None:
        uses = await self._limiter.settle(admission, tokens, cost_micro_usd)
        if uses:
            await self.alerts.record(uses)

    async def release(self, admission: Admission) -> None:
        await self._limiter.release(admission)
