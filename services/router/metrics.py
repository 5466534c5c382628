"""The router's own metrics: model calls, their latency and the tokens they used."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from moteur.runtime.metrics import LATENCY_BUCKETS

MODEL_CALLS = Counter("moteur_model_calls_total", "Calls to model deployments, by outcome.", ["model", "outcome"])
MODEL_LATENCY = Histogram(
    "moteur_model_call_duration_seconds", "Time of one model call, streams included.", ["model"],
    buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter("moteur_model_tokens_total", "Tokens used, by direction.", ["model", "direction"])
