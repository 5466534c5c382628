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
DISPATCH_CAPACITY = Gauge(
    "moteur_dispatch_capacity", "Turns this replica dispatches to the models at once, per pool.", ["pool"]
)
QUEUE_EXPIRED = Counter("moteur_queue_expired_total", "Turns whose deadline passed while queued.", ["level"])

OUTBOX_BACKLOG = Gauge("moteur_memory_outbox_backlog", "Chat messages persisted but not yet stored in memory.")
OUTBOX_DELIVERED = Counter("moteur_memory_outbox_delivered_total", "Chat messages stored in memory by the relay.")
OUTBOX_FAILURES = Counter("moteur_memory_outbox_failures_total", "Relay attempts that failed (memory or Milvus down).")
OUTBOX_DEAD_LETTERS = Counter(
    "moteur_memory_outbox_dead_letters_total",
    "Outbox entries memory refused for good, moved to memory_outbox_dead, by reason (the gRPC code, or malformed).",
    ["reason"],
)
RECALLS = Counter("moteur_memory_recalls_total", "Chat turns that asked memory for recall, by outcome.", ["outcome"])

ADMISSIONS = Counter(
    "moteur_admissions_total", "Chat turns admitted or rejected at the front door, per tenant.", ["tenant", "decision"]
)

TOOL_LOOPS = Counter(
    "moteur_tool_loop_turns_total",
    "Chat turns that offered tools, by how their loop ended: answered, requires_action, max_rounds, failed.",
    ["outcome"],
)
TOOL_ROUNDS = Histogram(
    "moteur_tool_loop_rounds", "Rounds of tool calls in one chat turn (or one SubmitToolResults).",
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16),
)
GATEWAY_TOOL_CALLS = Counter(
    "moteur_gateway_tool_calls_total", "Tool calls the models asked for, by where they run and their outcome.",
    ["runs_on", "outcome"],
)
TOOL_LISTINGS = Counter(
    "moteur_tool_listings_total", "Reads of a tenant's tools from the tools service: fetched, unavailable.",
    ["outcome"],
)

CHAT_FILES = Counter(
    "moteur_chat_files_total", "Chat answers rendered into files, by format and outcome (ok or the gRPC code).",
    ["format", "outcome"],
)

SESSION_WINDOW_LOOKUPS = Counter(
    "moteur_session_window_lookups_total",
    "Session windows a turn needed, by outcome: hit (kept here, nobody wrote since), miss (read from the store), "
    "unavailable (Redis down: read from the store)",
    ["outcome"],
)
for _outcome in ("hit", "miss", "unavailable"):
    SESSION_WINDOW_LOOKUPS.labels(_outcome)

HTTP_REQUESTS = Counter("moteur_http_requests_total", "Requests to the OpenAI-compatible HTTP API, by route and status",
                        ["route", "status"])
HTTP_LATENCY = Histogram("moteur_http_request_seconds", "How long the HTTP API took to answer, by route",
                         ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

RESPONSE_CACHE = Counter(
    "moteur_response_cache_total",
    "Chat turns the tenant's response cache was asked for, by result: hit, miss, skip (not cacheable: a long "
    "history, a file, tool results to read) or unavailable (memory slow or down: the model answered).", ["result"],
)
RESPONSE_CACHE_SECONDS = Histogram(
    "moteur_response_cache_lookup_seconds", "Time a turn spent asking the response cache, by result.", ["result"],
    buckets=LATENCY_BUCKETS,
)
RESPONSE_CACHE_SCORE = Histogram(
    "moteur_response_cache_hit_score", "Cosine between a question the cache answered and the question it kept.",
    buckets=(0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0),
)
RESPONSE_CACHE_STORES = Counter("moteur_response_cache_stores_total",
                                "Answers sent to the response cache, by result (ok, failed).", ["result"])
for _result in ("hit", "miss", "skip", "unavailable"):  # exported at 0 from the start, for the dashboard
    RESPONSE_CACHE.labels(_result)
