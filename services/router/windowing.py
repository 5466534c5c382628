"""Counting tokens and fitting a conversation into a model's context window.

A deployment whose registry entry names a ``tokenizer`` is counted exactly: ``gguf:<file>`` loads only
the vocabulary of a GGUF model (llama.cpp, the local models), ``hf:<tokenizer.json>`` a Hugging Face
tokenizer. Counts are cached per text, so a conversation's history is tokenized once, not every turn.
Elsewhere tokens are estimated at one per four characters, the usual rule of thumb for English with BPE
tokenizers, rounded up so that an estimate errs on the side of dropping a message rather than overflowing
the window. Either way each message adds a few tokens for the chat template.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from moteur.router.providers import Turn

_PER_MESSAGE_OVERHEAD = 4


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class TokenCounter:
    """Tokens of a text for one model: its tokenizer where known, else the estimate."""

    def __init__(self, tokenizer: str = "") -> None:
        self.exact = bool(tokenizer)
        count = _load(tokenizer) if tokenizer else estimate_tokens
        self.text: Callable[[str], int] = functools.lru_cache(maxsize=4096)(count) if self.exact else count

    def turn(self, turn: Turn) -> int:
        calls = sum(self.text(c.name) + self.text(c.arguments_json) for c in turn.tool_calls)
        return self.text(turn.content) + calls + _PER_MESSAGE_OVERHEAD

    def turns(self, turns: Sequence[Turn]) -> int:
        return sum(self.turn(t) for t in turns)


ESTIMATE = TokenCounter()


def _load(spec: str) -> Callable[[str], int]:
    kind, _, location = spec.partition(":")
    if kind == "hf":
        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(location)
        return lambda text: len(hf.encode(text, add_special_tokens=False).ids)
    if kind == "gguf":
        from llama_cpp import Llama  # the local extra; a cluster router uses hf: tokenizers

        vocab = Llama(model_path=str(Path(location)), vocab_only=True, verbose=False)
        return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=False))
    raise ValueError(f"tokenizer {spec!r}: expected 'gguf:<file>' or 'hf:<tokenizer.json>'")


def estimate_turn_tokens(turn: Turn) -> int:
    return ESTIMATE.turn(turn)


def window(turns: Sequence[Turn], budget: int, counter: TokenCounter = ESTIMATE) -> tuple[list[Turn], int]:
    """Keep system turns and the newest others that fit ``budget``; returns (kept, dropped count).

    The last turn (the user's question) is always kept: if it alone does not fit, the caller must refuse
    the request (the router does, before calling the model).
    """
    system = [t for t in turns if t.role == "system"]
    others = [t for t in turns if t.role != "system"]
    remaining = budget - counter.turns(system)
    kept: list[Turn] = []
    for turn in reversed(others):
        cost = counter.turn(turn)
        if kept and cost > remaining:
            break
        kept.append(turn)
        remaining -= cost
    kept.reverse()
    # A tool result whose call was dropped would be refused by the provider: it goes with its call.
    while len(kept) > 1 and kept[0].role == "tool":
        kept.pop(0)
    return [*system, *kept], len(others) - len(kept)
