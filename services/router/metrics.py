"""The router's own metrics: model calls, latency, first tokens, tokens, retries, fallbacks, substitutions,
breakers, tool calls read from a model's text."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from moteur.runtime.metrics import LATENCY_BUCKETS

MODEL_CALLS = Counter("moteur_model_calls_total", "Calls to model deployments, by outcome.", ["model", "outcome"])
MODEL_LATENCY = Histogram(
    "moteur_model_call_duration_seconds", "Time of one routed completion, streams included, fallbacks too.",
    ["model", "route"], buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "moteur_model_time_to_first_token_seconds", "Time from the request to the first streamed token.",
    ["model", "route"], buckets=LATENCY_BUCKETS,
)
MODEL_TOKENS = Counter("moteur_model_tokens_total", "Tokens used, by direction.", ["model", "direction"])
MODEL_COST = Counter("moteur_model_cost_micro_usd_total", "Cost of answered calls, in micro-USD (registry prices).",
                     ["model"])
RETRIES = Counter("moteur_model_retries_total", "Calls retried on the same deployment, by the failure.",
                  ["model", "outcome"])
FALLBACKS = Counter("moteur_model_fallbacks_total", "Requests passed on to a later candidate.", ["route", "to_model"])
SUBSTITUTIONS = Counter(
    "moteur_model_substitutions_total",
    "Requests whose named model (model_hint) could not answer: another model answered (allowed, the caller set "
    "allow_model_substitution) or the request failed UNAVAILABLE (refused).",
    ["model", "outcome"],
)
TEXT_TOOL_CALLS = Counter(
    "moteur_model_text_tool_calls_total",
    "Tool calls read from the text of a model that writes them there (tool_call_text in the registry).", ["model"],
)
TEXT_TOOL_CALLS_REFUSED = Counter(
    "moteur_model_text_tool_calls_refused_total",
    "Answers whose tool-call text was malformed, named a tool not offered or had invalid arguments: they "
    "stayed text.", ["model"],
)
BREAKER_STATE = Gauge("moteur_model_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", ["model"])
IN_FLIGHT = Gauge("moteur_model_in_flight", "Calls in flight per deployment.", ["model"])
ROUTE_DECISIONS = Counter("moteur_route_decisions_total", "Requests per route, by how the route was chosen.",
                          ["route", "how"])
CONFIG_RELOADS = Counter("moteur_router_config_reloads_total", "Registry reloads, by outcome (ok, refused).",
                         ["outcome"])
