"""The semantic response cache: a question near enough to one answered before, in the same context, gets that
answer again without a model call. Opt-in per tenant and request type (TenantSettings.response_cache).

What an answer depends on besides the question is its *context*, digested here and matched exactly: the
tenant and key tier, request type, model hint, generation settings (temperature, top_p, stop, schema, token limit),
the router's registry revision (a new registry — models, routes, system prompts — makes every older answer
unreachable), the tools offered, and the prompt before the question: recalled memories and at most
``max_history`` earlier messages (a longer conversation is not cached). The question is looked up by meaning:
memory embeds it and returns the kept questions within ``min_score`` (cosine). A hit also needs the same
question in words (moteur.gateway.wording.same_words: function words, politeness, casing, punctuation,
inflection and how numbers are written may differ; content words and their order may not). The embedding alone
cannot be trusted: on ``evals/cache.yaml`` the nearest near miss ("Convert 5 miles to km" for "Convert 5 km to
miles") scores 0.998, above every paraphrase — see ``python -m bench response_cache``. Only plain answers are
kept: none that called tools, were cut short, or went into a file.

The cache is a refinement: a lookup slower than ``timeout_seconds`` or a memory down lets the model answer
(``unavailable``), and answers are kept in the background, off the turn's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import structlog

from moteur.gateway.metrics import RESPONSE_CACHE, RESPONSE_CACHE_SCORE, RESPONSE_CACHE_SECONDS, RESPONSE_CACHE_STORES
from moteur.gateway.tenants import CachePolicy
from moteur.gateway.turns import TurnInput
from moteur.gateway.wording import question_words, same_words
from moteur.runtime.channels import mesh_metadata
from moteur.runtime.identity import Identity
from moteur.runtime.memory_limits import MAX_TEXT_CHARS
from moteur.v1 import common_pb2, memory_pb2, memory_pb2_grpc, router_pb2

log = structlog.get_logger("moteur.gateway.response_cache")


@dataclass(frozen=True, slots=True)
class CachedTurn:
    """An answer the cache gave back: what the model said then, and how near its question was."""

    content: str
    model: str
    route: str
    score: float
    question: str
    cached_at: datetime


class ResponseCache:
    def __init__(self, memory: memory_pb2_grpc.MemoryStub, revision: Callable[[], str], min_score: float = 0.90,
                 max_history: int = 2, timeout_seconds: float = 0.5, top_k: int = 4) -> None:
        self._memory = memory
        self._revision = revision  # the router's registry revision, as the gateway last saw it
        self.min_score = min_score
        self._max_history = max_history
        self._timeout = timeout_seconds
        self._top_k = top_k
        self._keeping: set[asyncio.Task[None]] = set()

    @staticmethod
    def asked(turn: TurnInput, policy: CachePolicy) -> bool:
        """Whether the cache is on for this turn: for the tenant and the request type, and not refused by the
        caller. Checked first, so that a turn the cache is off for builds nothing for it."""
        return turn.use_cache and policy.covers(turn.request_type)

    def context(self, identity: Identity, turn: TurnInput, policy: CachePolicy,
                prompt: Sequence[router_pb2.PromptMessage], tools: Sequence[router_pb2.ModelTool]) -> str | None:
        """The digest of what the answer to a turn the cache is asked for (:meth:`asked`) depends on besides its
        question, or None when the turn is not cacheable."""
        earlier = sum(1 for m in prompt if m.role != common_pb2.ROLE_SYSTEM)
        # A question longer than memory keeps one would be compared cut short: it is not cached.
        if not turn.message or len(turn.message) > MAX_TEXT_CHARS or turn.output_format \
                or earlier > self._max_history:
            RESPONSE_CACHE.labels("skip").inc()
            return None
        digest = hashlib.sha256()
        settings = [identity.tenant, identity.tier, turn.request_type, turn.model_hint, turn.allow_model_substitution,
                    turn.max_output_tokens, turn.temperature, turn.top_p, list(turn.stop), turn.json_schema,
                    turn.json_output, turn.tool_choice, self._revision(), policy.since_ms]
        digest.update(json.dumps(settings).encode())
        for part in (*prompt, *tools):
            serialized = part.SerializeToString(deterministic=True)
            digest.update(len(serialized).to_bytes(4, "big") + serialized)
        return digest.hexdigest()

    async def lookup(self, identity: Identity, context: str, question: str) -> CachedTurn | None:
        """The kept answer to the nearest question within ``min_score`` that says the same words, if any."""
        started = time.perf_counter()
        request = memory_pb2.LookupAnswerRequest(context=context, question=question,
                                                 min_score=self.min_score, top_k=self._top_k)
        try:
            found = await self._memory.LookupAnswer(request, metadata=mesh_metadata(identity), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            self._count("unavailable", started)
            log.warning("response_cache.unavailable", code=exc.code().name, error=(exc.details() or "")[:200])
            return None
        asked = question_words(question)
        for kept in found.answers:
            if not same_words(question_words(kept.question), asked):
                continue
            try:
                answer = json.loads(kept.answer_json)
                turn = CachedTurn(str(answer["content"]), str(answer["model"]), str(answer.get("route", "")),
                                  kept.score, kept.question, kept.created_at.ToDatetime(UTC))
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("response_cache.unreadable_entry", entry_id=kept.id)  # not written by this gateway
                continue
            self._count("hit", started)
            RESPONSE_CACHE_SCORE.observe(kept.score)
            return turn
        self._count("miss", started)
        return None

    def keep(self, identity: Identity, context: str, question: str, user: str, content: str, model: str,
             route: str, ttl_seconds: int) -> None:
        """Keep an answer for later questions near this one, in the background."""
        answer = json.dumps({"content": content, "model": model, "route": route})
        request = memory_pb2.StoreAnswerRequest(context=context, question=question,
                                                answer_json=answer, ttl_seconds=ttl_seconds, user_id=user)

        async def store() -> None:
            try:
                await self._memory.StoreAnswer(request, metadata=mesh_metadata(identity), timeout=self._timeout * 4)
            except grpc.aio.AioRpcError as exc:
                RESPONSE_CACHE_STORES.labels("failed").inc()
                log.warning("response_cache.store_failed", code=exc.code().name, error=(exc.details() or "")[:200])
            else:
                RESPONSE_CACHE_STORES.labels("ok").inc()

        task = asyncio.create_task(store(), name="response-cache-store")
        self._keeping.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._keeping.discard)

    async def clear(self, identity: Identity) -> None:
        """Drop every answer the tenant's cache holds (the tenant turned it off). They can no longer be found
        (see ``CachePolicy.since_ms``): a failure only logs, and their TTL frees the space all the same."""
        try:
            cleared = await self._memory.ClearAnswers(memory_pb2.ClearAnswersRequest(),
                                                      metadata=mesh_metadata(identity), timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            log.warning("response_cache.clear_failed", code=exc.code().name, error=(exc.details() or "")[:200])
        else:
            log.info("response_cache.cleared", answers=cleared.deleted)

    @staticmethod
    def _count(result: str, started: float) -> None:
        RESPONSE_CACHE.labels(result).inc()
        RESPONSE_CACHE_SECONDS.labels(result).observe(time.perf_counter() - started)
