"""Orchestration: a route's candidates in order, each call within the caller's deadline, retried when the
failure is transient, then the next candidate; breakers skip deployments that keep failing.

Per candidate deployment (a route names groups; a group's deployments are tried least-loaded first):
- skipped when its breaker is open, when its tier does not allow the caller, when it lacks a capability
  the request needs, or when the request does not fit its context window (windowed per deployment); a
  deployment without tool support still answers a request whose tools are optional (tool_choice auto),
  without them, but not one that requires a tool;
- retried with exponential backoff and jitter (tenacity) on retryable failures (unreachable, HTTP 5xx);
- abandoned for the next candidate on any failure another model may not share (timeout, rate limit,
  context length, malformed or empty answer, busy slots); a refused request (HTTP 4xx) is the caller's
  and is raised at once. After a provider's context-length refusal, only candidates with a larger context
  window are tried.
A stream falls back the same way until its first token; after it, a failure (its deployment's timeout
included: the timeout bounds the whole stream) ends the stream with its status, since text the caller has
seen cannot be taken back.

A model the caller names (``model_hint``: a group, or one deployment of it) is honoured: its deployments
are the only candidates — the one named first, then the rest of its group — and when none can answer the
request is UNAVAILABLE naming the model, unless the caller allows substitution
(``allow_model_substitution``), when the route's candidates follow as fallbacks. The answer always names
the deployment that gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import structlog
from langchain_core.prompts import PromptTemplate
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from moteur.router.deployments import DeploymentState, Fleet
from moteur.router.metrics import (
    FALLBACKS,
    MODEL_CALLS,
    MODEL_COST,
    MODEL_LATENCY,
    MODEL_TOKENS,
    RETRIES,
    SUBSTITUTIONS,
    TIME_TO_FIRST_TOKEN,
)
from moteur.router.providers import Completion, Generation, ModelCallError, ModelTool, Turn
from moteur.router.registry import ModelDeployment, ModelsConfig, Route
from moteur.router.routes import Embed, RouteDecision, RouteQuery, RouteTable
from moteur.router.windowing import ESTIMATE, window
from moteur.runtime.context import time_remaining
from moteur.runtime.errors import DeadlineExceeded, InvalidArgument, MoteurError, PermissionDenied, Unavailable

log = structlog.get_logger("moteur.router")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    turns: Sequence[Turn]
    request_type: str = ""  # "" : classify
    model_hint: str = ""
    tier: str = ""
    max_output_tokens: int = 0  # 0: the route's, else the deployment's default
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    json_output: bool = False
    json_schema: dict[str, Any] | None = None
    tools: tuple[ModelTool, ...] = ()
    tool_choice: str = ""  # "" (auto), "none", "required" or a tool's name
    # With model_hint: may another model answer when the named one cannot? False: UNAVAILABLE instead.
    allow_model_substitution: bool = False

    @property
    def needs_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice not in ("", "auto", "none")


@dataclass(slots=True)
class RoutedCompletion:
    completion: Completion
    deployment: ModelDeployment
    decision: RouteDecision
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    latency_ms: int
    dropped_messages: int
    time_to_first_token_ms: int = 0
    attempts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One candidate deployment, with the prompt windowed to its context."""

    state: DeploymentState
    turns: list[Turn]
    dropped: int
    generation: Generation
    # Only the last candidate waits for a busy deployment's slot; the others pass the request on at once.
    waits_for_slot: bool = False

    @property
    def name(self) -> str:
        return self.state.deployment.name


@dataclass(slots=True)
class _Tries:
    """What happened so far in one request: the attempts list of the response, and the last failure."""

    decision: RouteDecision
    # The model the caller named (model_hint) and its deployments; "" when it named none.
    named: str = ""
    named_deployments: frozenset[str] = frozenset()
    substitutes: bool = False  # the caller lets another model answer for the named one
    attempts: list[str] = field(default_factory=list)
    last_error: ModelCallError | None = None
    too_small: list[str] = field(default_factory=list)
    last_message_tokens: int = 0
    breaker_waits: list[float] = field(default_factory=list)
    refused_context: int = 0  # the largest context window whose provider said the prompt exceeds it


class ModelRouter:
    def __init__(self, config: ModelsConfig, revision: str = "", embed: Embed | None = None) -> None:
        self.fleet = Fleet()
        self._embed = embed
        self.apply(config, revision)

    def apply(self, config: ModelsConfig, revision: str) -> None:
        """Switch to a new, already validated configuration; calls in flight finish on the old one."""
        self.config, self.revision = config, revision
        self.routes = RouteTable(config, self._embed)
        self.fleet.update(config.models, config.breaker)

    # -- public ----------------------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> RoutedCompletion:
        tries, plans = await self._plans(request)
        started = time.perf_counter()
        for plan in plans:
            if not self._admit(plan, tries):
                continue
            try:
                completion = await self._retrying(plan, tries, functools.partial(self._call, plan))
            except ModelCallError as exc:
                if not exc.fallback:
                    raise
                continue
            return self._account(plan, tries, completion, started, first_token=None)
        raise self._exhausted(tries)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | RoutedCompletion]:
        tries, plans = await self._plans(request)
        started = time.perf_counter()
        for plan in plans:
            if not self._admit(plan, tries):
                continue
            async with contextlib.AsyncExitStack() as held:
                try:
                    first, rest, limit = await self._retrying(
                        plan, tries, functools.partial(self._open_stream, plan, held)
                    )
                except ModelCallError as exc:
                    if not exc.fallback:
                        raise
                    continue
                first_token = time.perf_counter()
                try:
                    item: str | Completion = first
                    while not isinstance(item, Completion):
                        yield item
                        # The limit applies around each wait for the model, never across the yield: a timer
                        # held across it would cancel the caller wherever it is between two tokens.
                        async with limit.applied():
                            item = await anext(rest)
                except ModelCallError as exc:
                    self._failed(plan, tries, exc, started)
                    raise ModelCallError(exc.code, exc.outcome, f"{exc.message} after the answer had begun; the "
                                         "streamed text is incomplete, ask again", fallback=False) from exc
                except BaseException:
                    plan.state.breaker.abandoned()
                    raise
                yield self._account(plan, tries, item, started, first_token)
                return
        raise self._exhausted(tries)

    # -- planning --------------------------------------------------------------------------------------
    async def _plans(self, request: CompletionRequest) -> tuple[_Tries, list[_Plan]]:
        input_tokens = ESTIMATE.turns(request.turns)  # for route conditions, before a model is chosen
        # The classifier reads the user's words, not a tool result that may follow them.
        asked = next((t.content for t in reversed(request.turns) if t.role == "user"), request.turns[-1].content)
        query = RouteQuery(request.request_type, request.tier, input_tokens, bool(request.tools),
                           request.json_output, asked)
        decision = await self.routes.decide(query)
        tries = _Tries(decision)
        targets = self._targets(request, decision.route)
        if request.model_hint:
            tries.named, tries.substitutes = request.model_hint, request.allow_model_substitution
            tries.named_deployments = frozenset(d.name for t in self._model(request.model_hint)
                                                for d in self.config.deployments_of(t))
        plans: list[_Plan] = []
        planned: set[str] = set()  # a deployment is one candidate, however many targets include it
        for target in targets:
            deployments = [d for d in self.config.deployments_of(target) if d.name not in planned]
            planned.update(d.name for d in deployments)
            for deployment in self._usable(deployments, request, tries):
                plan = self._fit(deployment, decision.route, request, tries)
                if plan is not None:
                    plans.append(plan)
        if plans:
            plans[-1] = dataclasses.replace(plans[-1], waits_for_slot=True)
        return tries, plans

    def _targets(self, request: CompletionRequest, route: Route) -> list[str]:
        if not request.model_hint:
            return list(route.candidates)
        if request.model_hint not in self.config.targets():
            valid = sorted(t for t in self.config.targets()
                           if any(_tier_allows(d, request.tier) for d in self.config.deployments_of(t)))
            raise InvalidArgument("model_hint", f"unknown model {request.model_hint!r}; valid: {', '.join(valid)}")
        allowed = [d for d in self.config.deployments_of(request.model_hint) if _tier_allows(d, request.tier)]
        if not allowed:
            raise PermissionDenied(f"tier {request.tier!r} may not choose model {request.model_hint!r}; "
                                   "leave model_hint empty to let the route choose")
        if not request.allow_model_substitution:
            return self._model(request.model_hint)
        # The named model first; the route's candidates remain its fallbacks.
        return [*self._model(request.model_hint), *route.candidates]

    def _model(self, hint: str) -> list[str]:
        """The targets that are the model a hint names: the group or deployment named, then (for a
        deployment) the other deployments of its group."""
        group = self.config.deployments_of(hint)[0].group_name
        return [hint] if group == hint else [hint, group]

    def _usable(self, deployments: Sequence[ModelDeployment], request: CompletionRequest,
                tries: _Tries) -> list[ModelDeployment]:
        usable = []
        for deployment in deployments:
            if not _tier_allows(deployment, request.tier):
                continue
            if request.json_output and not deployment.supports_json:
                tries.attempts.append(f"{deployment.name}:no_json")
                continue
            if request.needs_tools and not deployment.supports_tools:
                tries.attempts.append(f"{deployment.name}:no_tools")
                continue
            usable.append(deployment)
        return [state.deployment for state in self.fleet.ordered(usable)]

    def _fit(self, deployment: ModelDeployment, route: Route, request: CompletionRequest,
             tries: _Tries) -> _Plan | None:
        max_tokens = request.max_output_tokens or route.max_output_tokens or deployment.max_output_tokens
        max_tokens = min(max_tokens, deployment.max_output_tokens * 32, deployment.context_window // 2)
        system = _system_turn(route, request)
        tokens = self.fleet[deployment.name].tokens
        tools = request.tools if deployment.supports_tools and request.tool_choice != "none" else ()
        # Tool definitions go into the prompt: they take their share of the window.
        tool_tokens = tokens.text(json.dumps([t.openai_format() for t in tools])) if tools else 0
        budget = deployment.context_window - max_tokens - (tokens.turn(system) if system else 0) - tool_tokens
        # A message far longer than the window is refused on its length: counting its tokens exactly
        # (megabytes through a tokenizer) would take longer than the caller waits. No tokenizer packs 128
        # characters into one token.
        if ESTIMATE.turn(request.turns[-1]) > 32 * deployment.context_window:
            tries.last_message_tokens = ESTIMATE.turn(request.turns[-1])
            tries.too_small.append(f"{deployment.name} has a {deployment.context_window}-token context window")
            return None
        needed = tries.last_message_tokens = tokens.turn(request.turns[-1])
        if needed > budget:
            tries.too_small.append(f"{deployment.name} has room for {max(budget, 0)} input tokens "
                                   f"({deployment.context_window} context - {max_tokens} for the answer)")
            return None
        turns, dropped = window(request.turns, budget, tokens)
        generation = Generation(
            max_tokens=max_tokens,
            temperature=request.temperature if request.temperature is not None else route.temperature,
            top_p=request.top_p,
            stop=request.stop, json_output=request.json_output, json_schema=request.json_schema,
            tools=tools, tool_choice=request.tool_choice if tools else "",
        )
        return _Plan(self.fleet[deployment.name], [system, *turns] if system else turns, dropped, generation)

    # -- calling ---------------------------------------------------------------------------------------
    def _admit(self, plan: _Plan, tries: _Tries) -> bool:
        if plan.state.deployment.context_window <= tries.refused_context:
            tries.attempts.append(f"{plan.name}:context_too_small")
            return False
        if plan.state.breaker.try_acquire():
            if tries.attempts and not tries.attempts[-1].endswith((":no_json", ":no_tools")):
                FALLBACKS.labels(tries.decision.route.name, plan.name).inc()
            return True
        tries.attempts.append(f"{plan.name}:breaker_open")
        tries.breaker_waits.append(plan.state.breaker.retry_after())
        return False

    async def _retrying(self, plan: _Plan, tries: _Tries, call: Callable[[], Awaitable[T]]) -> T:
        policy = self.config.retry
        started = time.perf_counter()
        try:
            try:
                return await call()  # the common case never enters the retry machinery (it costs ~0.1 ms)
            except ModelCallError as exc:
                if not exc.retryable or policy.attempts == 1:
                    raise
                self._retry_noted(plan, tries, exc, started)
            backoff = wait_random_exponential(multiplier=policy.initial_backoff_seconds,
                                              max=policy.max_backoff_seconds)
            await asyncio.sleep(backoff(_Shifted(1)))  # type: ignore[arg-type]  # _Shifted stands in for a RetryCallState
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(policy.attempts - 1),
                # attempt n of these retries is attempt n + 1 of the call: the backoff keeps growing
                wait=lambda state: backoff(_Shifted(state.attempt_number + 1)),  # type: ignore[arg-type]  # as above
                retry=retry_if_exception(lambda e: isinstance(e, ModelCallError) and e.retryable),
                before_sleep=lambda state: self._retry_noted(
                    plan, tries, state.outcome.exception() if state.outcome else None, started),
                reraise=True,
            ):
                with attempt:
                    result = await call()
        except ModelCallError as exc:
            self._failed(plan, tries, exc, started)
            raise
        except BaseException:
            plan.state.breaker.abandoned()
            raise
        return result

    async def _call(self, plan: _Plan) -> Completion:
        budget = _call_budget(plan.state.deployment)
        async with plan.state.slot(budget if plan.waits_for_slot else 0):
            async with _TimeLimit(plan.state.deployment, budget).applied():
                return await plan.state.provider.complete(plan.turns, plan.generation)

    async def _open_stream(
        self, plan: _Plan, held: contextlib.AsyncExitStack
    ) -> tuple[str | Completion, AsyncIterator[str | Completion], _TimeLimit]:
        """Start a stream and wait for its first item; the slot stays held (in ``held``) until the stream
        ends, and the time limit returned bounds the rest. A failure before the first item leaves nothing
        held."""
        budget = _call_budget(plan.state.deployment)
        async with contextlib.AsyncExitStack() as attempt:
            await attempt.enter_async_context(plan.state.slot(budget if plan.waits_for_slot else 0))
            limit = _TimeLimit(plan.state.deployment, budget)
            items = plan.state.provider.stream(plan.turns, plan.generation)
            attempt.push_async_callback(items.aclose)
            async with limit.applied():
                first = await anext(items)
            held.push_async_exit(attempt.pop_all())
        return first, items, limit

    # -- outcomes --------------------------------------------------------------------------------------
    def _retry_noted(self, plan: _Plan, tries: _Tries, error: BaseException | None, started: float) -> None:
        if isinstance(error, ModelCallError):
            RETRIES.labels(plan.name, error.outcome).inc()
            self._failed(plan, tries, error, started)

    def _failed(self, plan: _Plan, tries: _Tries, error: ModelCallError, started: float) -> None:
        tries.attempts.append(f"{plan.name}:{error.outcome}")
        tries.last_error = error
        if error.outcome == "context_length":  # a model no larger would refuse the same prompt
            tries.refused_context = max(tries.refused_context, plan.state.deployment.context_window)
        MODEL_CALLS.labels(plan.name, error.outcome).inc()
        if error.trips_breaker:
            plan.state.breaker.failure()
        else:
            plan.state.breaker.abandoned()
        log.warning("model.call_failed", model=plan.name, outcome=error.outcome, error=error.message,
                    ms=round((time.perf_counter() - started) * 1000))

    def _exhausted(self, tries: _Tries) -> MoteurError:
        route = tries.decision.route.name
        refused = bool(tries.named) and not tries.substitutes  # only the named model could answer
        if not tries.attempts and tries.too_small:
            which = f"model {tries.named!r}" if refused else f"every model of route {route!r}"
            return InvalidArgument("messages", f"the last message is about {tries.last_message_tokens} tokens, "
                                   f"more than {which} can take: {'; '.join(tries.too_small)}")
        if not tries.attempts:
            return PermissionDenied(f"no model of route {route!r} is open to this tier")
        waits = tries.breaker_waits
        retry_after = max(min(waits) if waits and len(waits) == len(tries.attempts) else 1.0, 0.1)
        why = f": last error: {tries.last_error.message}" if tries.last_error else ""
        if refused:
            SUBSTITUTIONS.labels(tries.named, "refused").inc()
            tried = {attempt.rpartition(":")[0] for attempt in tries.attempts}
            failed = "its one deployment failed" if len(tried) == 1 else f"all {len(tried)} deployments failed"
            return Unavailable(f"model {tries.named!r} is unavailable ({failed}: {', '.join(tries.attempts)}){why}; "
                               "set allow_model_substitution to let moteur answer with another model",
                               retry_after_seconds=retry_after)
        return Unavailable(f"no model of route {route!r} could answer (tried {', '.join(tries.attempts)}){why}",
                           retry_after_seconds=retry_after)

    def _account(self, plan: _Plan, tries: _Tries, completion: Completion, started: float,
                 first_token: float | None) -> RoutedCompletion:
        deployment = plan.state.deployment
        # Providers that report no usage are counted by the router (exactly where it knows the tokenizer).
        input_tokens = completion.input_tokens
        if input_tokens is None:
            input_tokens = plan.state.tokens.turns(plan.turns)
        output_tokens = completion.output_tokens
        if output_tokens is None:
            output_tokens = plan.state.tokens.text(completion.text)
        elapsed = time.perf_counter() - started
        plan.state.breaker.success()
        plan.state.observed(elapsed)
        tries.attempts.append(f"{plan.name}:ok")
        MODEL_CALLS.labels(plan.name, "ok").inc()
        if tries.named and plan.name not in tries.named_deployments:
            SUBSTITUTIONS.labels(tries.named, "allowed").inc()
            log.info("model.substituted", named=tries.named, answered=plan.name, attempts=tries.attempts)
        MODEL_LATENCY.labels(plan.name, tries.decision.route.name).observe(elapsed)
        MODEL_TOKENS.labels(plan.name, "input").inc(input_tokens)
        MODEL_TOKENS.labels(plan.name, "output").inc(output_tokens)
        cost = deployment.cost_micro_usd(input_tokens, output_tokens)
        MODEL_COST.labels(plan.name).inc(cost)
        ttft = 0
        if first_token is not None:
            TIME_TO_FIRST_TOKEN.labels(plan.name, tries.decision.route.name).observe(first_token - started)
            ttft = round((first_token - started) * 1000)
        return RoutedCompletion(
            completion=completion, deployment=deployment, decision=tries.decision,
            input_tokens=input_tokens, output_tokens=output_tokens,
            cost_micro_usd=cost,
            latency_ms=round(elapsed * 1000), dropped_messages=plan.dropped, time_to_first_token_ms=ttft,
            attempts=tries.attempts,
        )


@dataclass(frozen=True, slots=True)
class _Shifted:
    """The part of tenacity's retry state its backoff reads: which attempt comes next."""

    attempt_number: int


def _tier_allows(deployment: ModelDeployment, tier: str) -> bool:
    return not deployment.tiers or tier in deployment.tiers


def _system_turn(route: Route, request: CompletionRequest) -> Turn | None:
    if not route.system_prompt:
        return None
    text = PromptTemplate.from_template(route.system_prompt).format(
        request_type=request.request_type or "chat", tier=request.tier, date=datetime.date.today().isoformat()
    )
    return Turn("system", text)


def _call_budget(deployment: ModelDeployment) -> float:
    """The deployment's timeout, shortened to what remains of the caller's deadline."""
    remaining = time_remaining()
    budget = deployment.timeout_seconds if remaining is None else min(deployment.timeout_seconds, remaining)
    if budget <= 0:
        raise DeadlineExceeded("the deadline passed before a model could be called; allow more time")
    return budget


class _TimeLimit:
    """One call's time limit, ``budget`` seconds from its start: the deployment's own timeout is a failure
    another model may not share; the caller's deadline (when it leaves less) ends the request."""

    def __init__(self, deployment: ModelDeployment, budget: float) -> None:
        self.deployment, self.budget = deployment, budget
        self.ends = asyncio.get_running_loop().time() + budget

    @contextlib.asynccontextmanager
    async def applied(self) -> AsyncIterator[None]:
        """The limit over one wait for the model; a stream applies it to each of its waits in turn."""
        try:
            async with asyncio.timeout_at(self.ends):
                yield
        except TimeoutError:
            name = self.deployment.name
            if self.budget < self.deployment.timeout_seconds:
                raise DeadlineExceeded(f"model {name!r} did not answer before the deadline; allow more "
                                       "time or ask for fewer tokens") from None
            raise ModelCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "timeout",
                                 f"model {name!r} did not answer within its {self.budget:g} s timeout") from None
