"""The gateway's own metrics: chat turns and the tokens they used."""

from __future__ import annotations

from prometheus_client import Counter

CHAT_TURNS = Counter(
    "moteur_chat_turns_total", "Chat turns, by model and outcome (ok, replay, or the gRPC code).", ["model", "outcome"]
)
CHAT_TOKENS = Counter("moteur_chat_tokens_total", "Tokens of answered chat turns, by model and direction.",
                      ["model", "direction"])
