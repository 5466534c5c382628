"""Choosing a deployment, fitting the prompt into it, calling it within the caller's deadline, counting.

This is the foundation's router: one candidate per request (the hint or the default). Routes by request
type, fallbacks, retries and circuit breakers extend :meth:`ModelRouter._candidates` and the call loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import structlog

from moteur.router.metrics import MODEL_CALLS, MODEL_LATENCY, MODEL_TOKENS
from moteur.router.providers import Completion, Generation, Provider, Turn, provider_for
from moteur.router.registry import ModelDeployment, ModelsConfig
from moteur.router.windowing import estimate_tokens, estimate_turn_tokens, window
from moteur.runtime.context import time_remaining
from moteur.runtime.errors import DeadlineExceeded, InvalidArgument, MoteurError, NotFound

log = structlog.get_logger("moteur.router")


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    turns: Sequence[Turn]
    model_hint: str = ""
    max_output_tokens: int = 0  # 0: the deployment's default
    temperature: float | None = None
    stop: Sequence[str] = ()


@dataclass(slots=True)
class RoutedCompletion:
    completion: Completion
    deployment: ModelDeployment
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    latency_ms: int
    dropped_messages: int
    attempts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    deployment: ModelDeployment
    provider: Provider
    turns: list[Turn]
    dropped: int
    generation: Generation


class ModelRouter:
    def __init__(self, config: ModelsConfig) -> None:
        self.config = config
        self._providers: dict[str, Provider] = {m.name: provider_for(m) for m in config.models}

    def _plan(self, request: CompletionRequest) -> _Plan:
        name = request.model_hint or self.config.default_model
        deployment = self.config.get(name)
        if deployment is None:
            known = ", ".join(m.name for m in self.config.models)
            raise NotFound(f"model {name!r} is not in the registry; known models: {known}")
        max_tokens = request.max_output_tokens or deployment.max_output_tokens
        budget = deployment.context_window - max_tokens
        last = request.turns[-1]
        if estimate_turn_tokens(last) > budget:
            raise InvalidArgument(
                "messages",
                f"the last message is about {estimate_tokens(last.content)} tokens; model {name!r} has room for "
                f"{budget} input tokens ({deployment.context_window} context - {max_tokens} for the answer)",
            )
        turns, dropped = window(request.turns, budget)
        generation = Generation(max_tokens=max_tokens, temperature=request.temperature, stop=request.stop)
        return _Plan(deployment, self._providers[name], turns, dropped, generation)

    async def complete(self, request: CompletionRequest) -> RoutedCompletion:
        plan = self._plan(request)
        started = time.perf_counter()
        async with self._attempt(plan, started):
            completion = await plan.provider.complete(plan.turns, plan.generation)
        return self._account(plan, completion, started)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | RoutedCompletion]:
        plan = self._plan(request)
        started = time.perf_counter()
        async with self._attempt(plan, started):
            async for item in plan.provider.stream(plan.turns, plan.generation):
                yield self._account(plan, item, started) if isinstance(item, Completion) else item

    @contextlib.asynccontextmanager
    async def _attempt(self, plan: _Plan, started: float) -> AsyncIterator[None]:
        """One call to a deployment within the caller's deadline; failures are counted, then raised."""
        try:
            async with asyncio.timeout(_call_budget(plan.deployment)):
                yield
        except TimeoutError as exc:
            self._count(plan, "deadline_exceeded", started)
            raise _deadline(plan.deployment) from exc
        except MoteurError as exc:
            self._count(plan, exc.code.name.lower(), started)
            raise

    def _account(self, plan: _Plan, completion: Completion, started: float) -> RoutedCompletion:
        deployment = plan.deployment
        # Providers that report no usage are counted with the router's estimate.
        input_tokens = completion.input_tokens
        if input_tokens is None:
            input_tokens = sum(estimate_turn_tokens(t) for t in plan.turns)
        output_tokens = completion.output_tokens
        if output_tokens is None:
            output_tokens = estimate_tokens(completion.text)
        latency = self._count(plan, "ok", started)
        MODEL_TOKENS.labels(deployment.name, "input").inc(input_tokens)
        MODEL_TOKENS.labels(deployment.name, "output").inc(output_tokens)
        return RoutedCompletion(
            completion=completion,
            deployment=deployment,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_micro_usd=deployment.cost_micro_usd(input_tokens, output_tokens),
            latency_ms=round(latency * 1000),
            dropped_messages=plan.dropped,
            attempts=[f"{deployment.name}:ok"],
        )

    def _count(self, plan: _Plan, outcome: str, started: float) -> float:
        elapsed = time.perf_counter() - started
        MODEL_CALLS.labels(plan.deployment.name, outcome).inc()
        MODEL_LATENCY.labels(plan.deployment.name).observe(elapsed)
        if outcome != "ok":
            log.warning("model.call_failed", model=plan.deployment.name, outcome=outcome, ms=round(elapsed * 1000))
        return elapsed


def _call_budget(deployment: ModelDeployment) -> float:
    """The deployment's timeout, shortened to what remains of the caller's deadline."""
    remaining = time_remaining()
    budget = deployment.timeout_seconds if remaining is None else min(deployment.timeout_seconds, remaining)
    if budget <= 0:
        raise _deadline(deployment)
    return budget


def _deadline(deployment: ModelDeployment) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"model {deployment.name!r} did not answer before the deadline; allow more time or ask for fewer tokens"
    )
