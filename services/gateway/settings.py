"""The gateway's settings, read from its environment (prefix ``MOTEUR_``): its stores (Redis), tiers and
limits, dispatch queue, recall and tool loop. What every service reads is in ``moteur.runtime.settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from moteur.runtime.settings import MoteurSettings

RecallKind = Literal["fact", "message", "reply", "document_chunk"]

class RedisSettings(MoteurSettings):
    redis_url: str = Field("redis://localhost:6379/0", description="Redis for rate limits and quotas.")


class GatewaySettings(MoteurSettings):
    tiers_file: Path = Field(Path("config/tiers.yaml"), description="Tiers: limits, quotas and priorities (YAML).")
    alert_webhook_url: str = Field("", description="Where quota alerts are POSTed as JSON; empty: not sent.")
    lease_seconds: float = Field(
        30.0, gt=0, description="Concurrency slots are leases of this length, renewed while the call runs: a "
        "gateway that dies mid-call frees its slots within this."
    )
    queue_capacity: int = Field(
        64, gt=0, description="Most chat turns one replica dispatches at once per pool (the registry may say fewer)."
    )
    queue_replicas: int = Field(
        1, gt=0, description="Gateway replicas sharing the models: each dispatches its share of their capacity."
    )
    queue_max_queued: int = Field(1000, ge=0, description="Turns that may wait, per replica.")
    queue_max_queued_per_tenant: int = Field(100, ge=0, description="Turns one tenant may have waiting.")
    queue_critical_share: float = Field(
        0.1, ge=0, lt=1, description="Share of each pool's dispatch slots only critical turns may use (rounded down)."
    )
    recall_top_k: int = Field(8, gt=0, le=100, description="Memories asked for per chat turn (recall).")
    recall_min_score: float = Field(
        0.845, ge=-1, le=1, description="Least rank score (cosine plus bonuses) of a recalled memory (calibrated "
        "for the default embedding model on evals/recall.yaml: python -m bench memory)."
    )
    recall_margin: float = Field(
        0.0, ge=0, le=2, description="A recalled memory scores at most this much below the best one (calibrated "
        "with recall_min_score)."
    )
    recall_fact_bonus: float = Field(
        0.03, ge=0, le=1, description="Added to a fact's cosine to rank it (calibrated with recall_min_score)."
    )
    recall_word_bonus: float = Field(
        0.03, ge=0, le=1, description="Added to a memory's cosine when it shares a content word with the question "
        "(English and French stems; calibrated with recall_min_score)."
    )
    recall_kinds: list[RecallKind] = Field(
        default_factory=lambda: list[RecallKind](["fact", "message"]),
        description="What recall searches: the user's facts and own messages; 'reply' adds the assistant's past "
        "answers."
    )
    recall_token_budget: int = Field(256, ge=0, description="Most prompt tokens recalled memories may take.")
    recall_timeout_seconds: float = Field(
        1.0, gt=0, description="Longest a turn waits for recall before going on without memories."
    )
    response_cache_min_score: float = Field(
        0.90, gt=0, le=1, description="Least cosine between a question and a kept one for the response cache to "
        "answer (calibrated for the default embedding model on evals/cache.yaml: python -m bench response_cache)."
    )
    response_cache_max_history: int = Field(
        2, ge=0, le=16, description="Most earlier messages a turn may have (besides recalled memories) for the "
        "response cache to be asked: a longer conversation is not cached."
    )
    response_cache_timeout_seconds: float = Field(
        0.5, gt=0, description="Longest a turn waits for the response cache before asking the model."
    )
    queue_max_wait_seconds: float = Field(30.0, gt=0, description="Longest a turn waits for a slot.")
    group_commit_max_turns: int = Field(
        64, ge=1, le=1024, description="Turns whose writes one MongoDB bulk write may carry while another is in "
        "flight (group commit: one journal sync for all); 1 sends each turn's writes alone."
    )
    http_port: int = Field(
        8080, ge=0, le=65535, description="Port of the OpenAI-compatible HTTP API (/v1/models, …); 0: not served."
    )
    session_windows: int = Field(
        4096, ge=0, description="Sessions whose window (newest messages) this gateway keeps between turns, so that "
        "a turn on a session it wrote last reads nothing from MongoDB; Redis tells whether another turn wrote "
        "since (moteur.gateway.windows). 0: every turn reads its session."
    )
    session_window_seconds: float = Field(
        600.0, gt=0, description="How long a kept window may serve: the bound on staleness should Redis lose its "
        "data while a turn is under way."
    )
    tool_max_rounds: int = Field(
        8, ge=1, le=64, description="Rounds of tool calls in one chat turn before the model must answer."
    )
    tool_max_parallel: int = Field(8, ge=1, le=64, description="Tool calls of one round run at once.")
    tool_loop_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest one chat turn (or SubmitToolResults) may spend on model and tool calls."
    )
    tool_results_wait_seconds: float = Field(
        600.0, gt=0, description="How long a turn waits for the caller's tool results (REQUIRES_ACTION)."
    )
    tool_list_cache_seconds: float = Field(
        30.0, ge=0, description="How long the gateway keeps a tenant's tool list before asking the tools service."
    )
