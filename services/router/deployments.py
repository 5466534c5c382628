"""The live state of each deployment: its circuit breaker, its calls in flight, its recent latency.

The breaker is a few lines rather than a library: the async breakers on PyPI (aiobreaker, purgatory) are
unmaintained or wrap calls in ways that hide the half-open probe, which the router must see to report
health and to compute when a caller may retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import grpc

from moteur.router.metrics import BREAKER_STATE, IN_FLIGHT
from moteur.router.providers import ModelCallError, Provider, provider_for
from moteur.router.registry import BreakerPolicy, ModelDeployment
from moteur.router.toolcalls import reading_text_calls
from moteur.router.windowing import TokenCounter

BreakerState = Literal["closed", "open", "half_open"]
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after ``open_seconds``,
    when one probe call is let through: its success closes the breaker, its failure opens it again."""

    def __init__(self, name: str, policy: BreakerPolicy) -> None:
        self.name = name
        self.policy = policy
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.policy.open_seconds else "open"

    def retry_after(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.policy.open_seconds - time.monotonic())

    def try_acquire(self) -> bool:
        """May a call go to this deployment now? In half-open, only the one probe may."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            BREAKER_STATE.labels(self.name).set(_STATE_VALUE["half_open"])  # shown while its probe is out
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self._probing = 0, None, False
        BREAKER_STATE.labels(self.name).set(0)

    def failure(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.policy.failure_threshold:
            self.opened_at = time.monotonic()
            BREAKER_STATE.labels(self.name).set(_STATE_VALUE["open"])
        self._probing = False

    def abandoned(self) -> None:
        """The call ended without saying anything about health (cancelled, refused input)."""
        self._probing = False


class DeploymentState:
    def __init__(self, deployment: ModelDeployment, breaker: BreakerPolicy) -> None:
        self.deployment = deployment
        self.provider: Provider = reading_text_calls(provider_for(deployment), deployment)
        self.tokens = TokenCounter(deployment.tokenizer)
        self.breaker = CircuitBreaker(deployment.name, breaker)
        self.in_flight = 0
        self.latency_ewma = 0.0  # seconds; 0 until the first answer
        self._slots = asyncio.Semaphore(deployment.max_concurrency)
        BREAKER_STATE.labels(deployment.name).set(0)

    @property
    def health(self) -> Literal["healthy", "degraded", "unavailable"]:
        state = self.breaker.state
        if state == "open":
            return "unavailable"
        return "degraded" if state == "half_open" or self.breaker.failures else "healthy"

    def load(self) -> float:
        """Lower is better: calls in flight per unit of weight, scaled by how slow it has been lately."""
        return (self.in_flight + 1) / self.deployment.weight * max(self.latency_ewma, 0.001)

    @contextlib.asynccontextmanager
    async def slot(self, wait: float) -> AsyncIterator[None]:
        """One of the deployment's ``max_concurrency`` call slots, waited for at most ``wait`` seconds."""
        try:
            if not self._slots.locked():
                await self._slots.acquire()  # free: taken at once, so the next caller sees it in flight
            elif wait <= 0:
                raise TimeoutError
            else:
                await asyncio.wait_for(self._slots.acquire(), wait)
        except TimeoutError:
            raise ModelCallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                f"model {self.deployment.name!r} had all {self.deployment.max_concurrency} call slots busy",
                trips_breaker=False,
            ) from None
        self.in_flight += 1
        IN_FLIGHT.labels(self.deployment.name).inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            IN_FLIGHT.labels(self.deployment.name).dec()
            self._slots.release()

    def observed(self, seconds: float) -> None:
        self.latency_ewma = seconds if not self.latency_ewma else 0.8 * self.latency_ewma + 0.2 * seconds


class Fleet:
    """Every deployment's state; kept across registry reloads for deployments whose settings did not change."""

    def __init__(self) -> None:
        self._states: dict[str, DeploymentState] = {}

    def update(self, deployments: Sequence[ModelDeployment], breaker: BreakerPolicy) -> None:
        states: dict[str, DeploymentState] = {}
        for deployment in deployments:
            current = self._states.get(deployment.name)
            same = current is not None and current.deployment == deployment and current.breaker.policy == breaker
            states[deployment.name] = current if same and current is not None else DeploymentState(deployment, breaker)
        self._states = states

    def __getitem__(self, name: str) -> DeploymentState:
        return self._states[name]

    def ordered(self, deployments: Sequence[ModelDeployment]) -> list[DeploymentState]:
        """The deployments of a group, best first: closed breakers before half-open ones, then least loaded."""
        states = [self._states[d.name] for d in deployments]
        return sorted(states, key=lambda s: (s.breaker.state != "closed", s.load()))
