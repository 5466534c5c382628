"""Fitting a conversation into a model's context window.

Tokens are estimated at one per four characters (plus a few per message for the chat template): the
usual rule of thumb for English with BPE tokenizers, deliberately rounded up so that an estimate errs on
the side of dropping a message rather than overflowing the window. The model's exact tokenizer replaces
it where the registry knows one (a later issue).
"""

from __future__ import annotations

from collections.abc import Sequence

from moteur.router.providers import Turn

_PER_MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def estimate_turn_tokens(turn: Turn) -> int:
    return estimate_tokens(turn.content) + _PER_MESSAGE_OVERHEAD


def window(turns: Sequence[Turn], budget: int) -> tuple[list[Turn], int]:
    """Keep system turns and the newest others that fit ``budget``; returns (kept, dropped count).

    The last turn (the user's question) is always kept: if it alone does not fit, the caller must refuse
    the request (the router does, before calling the model).
    """
    system = [t for t in turns if t.role == "system"]
    others = [t for t in turns if t.role != "system"]
    remaining = budget - sum(estimate_turn_tokens(t) for t in system)
    kept: list[Turn] = []
    for turn in reversed(others):
        cost = estimate_turn_tokens(turn)
        if kept and cost > remaining:
            break
        kept.append(turn)
        remaining -= cost
    kept.reverse()
    return [*system, *kept], len(others) - len(kept)
