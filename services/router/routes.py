"""Choosing the route of a request: by its type and conditions, or by what it looks like.

A request without a type is classified: the instruction of its last message — the text before the first
colon or line break, at most 16 words, because a request's intent leads and the material after it (the
text to summarise, the code to fix) would otherwise decide by its topic — is embedded through the memory
service's Embed and compared with the embedded examples of each route. Both are embedded as E5 queries
(``query: ``, ``EMBED_AS_QUERY``): comparing two short requests is a symmetric task, and on
``evals/routes.yaml`` queries beat passages in every configuration tried.

E5's cosines are compressed (unrelated sentences score 0.75 to 0.82, and a request leans toward examples in
its own language), so raw cosines to the nearest example mostly measure style and language. The vectors are
therefore centred on the mean of all the routes' examples — what every sentence shares goes — and the
request is compared with each route's centroid (the mean of its centred examples): the nearest route wins
when that cosine reaches ``classifier_min_score``, else the catch-all route takes it (``python -m bench
router`` calibrates it). The decision and its score travel back to the caller in the response.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from moteur.router.metrics import ROUTE_DECISIONS
from moteur.router.registry import ModelsConfig, Route
from moteur.runtime.errors import MoteurError

log = structlog.get_logger("moteur.router.routes")

EMBED_RETRY_SECONDS = 5.0
# The E5 prefix of the examples and the requests alike (memory's EmbedRequest.query): the router's embedder
# (memory_embedder in __main__.py) asks for it, and the calibration and tests embed the same way.
EMBED_AS_QUERY = True
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
        self._centroids: _Centroids | None = None  # embedded lazily, once per config
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
            centroids = await self._embedded_centroids()
            [vector] = await self._embed([instruction_of(query.text)])
        except MoteurError as exc:
            # Classification is a refinement: a memory service that is down costs the choice, not the answer,
            # and is not asked again for a while.
            self._embed_down_until = time.monotonic() + EMBED_RETRY_SECONDS
            log.warning("route.classifier_unavailable", error=exc.message, retry_in_s=EMBED_RETRY_SECONDS)
            return RouteDecision(default, "classifier_unavailable")
        route, score = centroids.nearest(vector)
        if score < self.config.classifier_min_score:
            return RouteDecision(default, "default", score)
        request_type = route.request_types[0] if route.request_types else ""
        # The classifier named a request type; the route for it still has to fit the request's conditions.
        chosen = route if _matches(route, query, request_type) else self.for_type(query, request_type)
        return RouteDecision(chosen, "classifier", score, request_type)

    async def _embedded_centroids(self) -> _Centroids:
        if self._centroids is None:
            assert self._embed is not None
            routes = [r for r in self.routes if r.examples]
            self._centroids = _Centroids.of(routes, await self._embed([e for r in routes for e in r.examples]))
        return self._centroids


@dataclass(frozen=True, slots=True)
class _Centroids:
    """The routes' examples centred on their mean, and each route's centroid, unit length."""

    mean: np.ndarray
    routes: Sequence[Route]
    unit: np.ndarray  # (routes, dimensions)

    @classmethod
    def of(cls, routes: Sequence[Route], vectors: Sequence[Sequence[float]]) -> _Centroids:
        """``vectors``: the examples of ``routes``, route after route."""
        examples = np.asarray(vectors, dtype=np.float64)
        # With a single route there is nothing to tell apart: centring would leave its centroid at zero.
        mean = examples.mean(axis=0) if len(routes) > 1 else np.zeros(examples.shape[1])
        centred = _unit(examples - mean)
        ends = np.cumsum([len(r.examples) for r in routes])[:-1]
        centroids = np.stack([part.mean(axis=0) for part in np.split(centred, ends)])
        return cls(mean, routes, _unit(centroids))

    def nearest(self, vector: Sequence[float]) -> tuple[Route, float]:
        """The route whose centroid is nearest to ``vector`` (centred likewise), and their cosine."""
        scores = self.unit @ _unit(np.asarray(vector, dtype=np.float64) - self.mean)
        best = int(np.argmax(scores))
        return self.routes[best], float(scores[best])


def instruction_of(text: str) -> str:
    head = re.split(r"[:\n]", text, maxsplit=1)[0]
    return " ".join(head.split()[:16]) or text[:200]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
