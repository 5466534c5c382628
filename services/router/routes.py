"""Choosing the route of a request: by its type and conditions, or by what it looks like.

A request without a type is classified: the instruction of its last message — the text before the first
colon or line break, at most 16 words, because a request's intent leads and the material after it (the
text to summarise, the code to fix) would otherwise decide by its topic — is embedded through the memory
service's Embed and compared with the embedded examples of each route; the nearest example's route wins
when its cosine similarity reaches ``classifier_min_score``, else the catch-all route takes it. The decision and its
score travel back to the caller in the response.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from moteur.router.metrics import ROUTE_DECISIONS
from moteur.router.registry import ModelsConfig, Route
from moteur.runtime.errors import MoteurError

log = structlog.get_logger("moteur.router.routes")

EMBED_RETRY_SECONDS = 5.0
Embed = Callable[[Sequence[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True, slots=True)
class RouteQuery:
    request_type: str  # "" when the caller gave none
    tier: str
    input_tokens: int
    tools: bool
    json_output: bool
    text: str  # the last message, for the classifier


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: Route
    how: str  # "request_type", "classifier", "default", "classifier_unavailable"
    score: float = 0.0
    classified_as: str = ""  # the request type the classifier chose


def _matches(route: Route, query: RouteQuery, request_type: str) -> bool:
    when = route.when
    return (
        (not route.request_types or request_type in route.request_types)
        and (not when.tiers or query.tier in when.tiers)
        and query.input_tokens >= when.min_input_tokens
        and (not when.max_input_tokens or query.input_tokens <= when.max_input_tokens)
        and (when.tools is None or when.tools == query.tools)
        and (when.json_output is None or when.json_output == query.json_output)
    )


class RouteTable:
    def __init__(self, config: ModelsConfig, embed: Embed | None = None) -> None:
        self.config = config
        self.routes = config.all_routes()
        self._embed = embed
        self._examples: list[tuple[Route, list[float]]] | None = None  # embedded lazily, once per config
        self._embed_down_until = 0.0

    def for_type(self, query: RouteQuery, request_type: str) -> Route:
        return next(r for r in self.routes if _matches(r, query, request_type) or r.catch_all)

    async def decide(self, query: RouteQuery) -> RouteDecision:
        if query.request_type:
            decision = RouteDecision(self.for_type(query, query.request_type), "request_type")
        else:
            decision = await self._classify(query)
        ROUTE_DECISIONS.labels(decision.route.name, decision.how).inc()
        return decision

    async def _classify(self, query: RouteQuery) -> RouteDecision:
        default = self.for_type(query, "")
        if not any(r.examples for r in self.routes):
            return RouteDecision(default, "default")
        if self._embed is None or time.monotonic() < self._embed_down_until:
            return RouteDecision(default, "classifier_unavailable")
        try:
            examples = await self._embedded_examples()
            [vector] = await self._embed([instruction_of(query.text)])
        except MoteurError as exc:
            # Classification is a refinement: a memory service that is down costs the choice, not the answer,
            # and is not asked again for a while.
            self._embed_down_until = time.monotonic() + EMBED_RETRY_SECONDS
            log.warning("route.classifier_unavailable", error=exc.message, retry_in_s=EMBED_RETRY_SECONDS)
            return RouteDecision(default, "classifier_unavailable")
        route, score = max(((r, _cosine(vector, v)) for r, v in examples), key=lambda pair: pair[1])
        if score < self.config.classifier_min_score:
            return RouteDecision(default, "default", score)
        request_type = route.request_types[0] if route.request_types else ""
        # The classifier named a request type; the route for it still has to fit the request's conditions.
        chosen = route if _matches(route, query, request_type) else self.for_type(query, request_type)
        return RouteDecision(chosen, "classifier", score, request_type)

    async def _embedded_examples(self) -> list[tuple[Route, list[float]]]:
        if self._examples is None:
            assert self._embed is not None
            pairs = [(r, e) for r in self.routes for e in r.examples]
            vectors = await self._embed([e for _, e in pairs])
            self._examples = [(r, v) for (r, _), v in zip(pairs, vectors, strict=True)]
        return self._examples


def instruction_of(text: str) -> str:
    head = re.split(r"[:\n]", text, maxsplit=1)[0]
    return " ".join(head.split()[:16]) or text[:200]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
