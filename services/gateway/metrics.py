"""The gateway's own metrics: chat turns and the tokens they used."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from moteur.runtime.metrics import LATENCY_BUCKETS

CHAT_TURNS = Counter(
    "moteur_chat_turns_total", "Chat turns, by model and outcome (ok, replay, or the gRPC code).", ["model", "outcome"]
)
CHAT_TOKENS = Counter("moteur_chat_tokens_total", "Tokens of answered chat turns, by model and direction.",
                      ["model", "direction"])

LIMITER_DECISIONS = Counter(
    "moteur_limiter_decisions_total", "Admission decisions of the rate limiter: admitted, or refused:<limit>.",
    ["decision"],
)
LIMITER_FALLBACKS = Counter(
    "moteur_limiter_redis_unavailable_total", "Admissions made while Redis was unreachable, by tier policy.",
    ["policy"],
)
QUOTA_ALERTS = Counter(
    "moteur_quota_alerts_total", "Quota thresholds crossed (recorded once per threshold and period).",
    ["limit", "threshold"],
)

QUEUE_DEPTH = Gauge("moteur_queue_depth", "Chat turns waiting for a model, by priority level.", ["level"])
QUEUE_WAIT = Histogram(
    "moteur_queue_wait_seconds", "Time a chat turn waited in the queue before dispatch.", ["level"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_SHED = Counter(
    "moteur_queue_shed_total", "Turns refused or evicted by the queue, by level and reason.", ["level", "reason"]
)
QUEUE_EXPIRED = Counter("moteur_queue_expired_total", "Turns whose deadline passed while queued.", ["level"])

ADMISSIONS = Counter(
    "moteur_admissions_total", "Chat turns admitted or rejected at the front door, per tenant.", ["tenant", "decision"]
)
