"""The semantic response cache on the French/English paraphrase set ``evals/cache.yaml`` (issue 19).

1. **Calibration** (the embedding model alone, as memory runs it): for each threshold, the share of paraphrases
   a kept question would answer, and the near misses it would wrongly answer — by cosine alone, and by cosine
   and the gateway's word check (``moteur.gateway.wording.same_question``), the rule the gateway applies.
2. **Through the mesh** (gateway ``Chat``, instant model, memory's E5): a tenant with the cache on asks every
   group's question (kept), then each paraphrase and near miss; the instant model echoes the question it
   answered, so a hit names the kept question it came from. Figures: hit rate, false hits (a near miss answered
   from the cache, or a paraphrase answered with another group's answer), and the p50 of a hit, of a miss (the
   lookup's cost on top of the model) and of the same turn in a tenant without the cache, in the same run.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from bench.keys import bench_key
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.gateway.wording import same_question
from moteur.memory.embeddings import E5Embeddings
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

EVALS = Path(__file__).resolve().parent.parent / "evals" / "cache.yaml"
THRESHOLDS = (0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
ANSWER_PREFIX = "instant answer to: "


_FRENCH = re.compile(r"\b(?:est|sont|la|le|les|des|du|une|quel|quelle|quels|comment|combien|pourquoi|qu'|en|dans)\b",
                     re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    question: str
    paraphrases: tuple[str, ...]
    near_misses: tuple[str, ...]

    @property
    def retyped(self) -> str:
        """The question typed again as people do: lower case, no final mark, a politeness added — what a cache
        sees most (a question asked again, a retry, the same FAQ)."""
        please = "s'il vous plaît" if _FRENCH.search(self.question) else "please"
        return f"{self.question.rstrip(' ?.!').lower()}, {please}"


def load_groups(path: Path = EVALS) -> list[Group]:
    return [Group(g["id"], g["question"], tuple(g["paraphrases"]), tuple(g["near_misses"]))
            for g in yaml.safe_load(path.read_text())]


def calibrate(groups: list[Group]) -> str:
    """The threshold table, by cosine alone and with the word check (the last paraphrase and near miss of every
    group are in the other language)."""
    model = E5Embeddings()
    rows: list[tuple[str, bool, float, bool]] = []  # kind, same language, cosine, same words
    retyped: list[float] = []  # cosines of the questions typed again (the same words by construction)
    for group in groups:
        texts = [group.question, *group.paraphrases, *group.near_misses, group.retyped]
        vectors = model.embed_array(texts, query=True)
        cosines = vectors[1:] @ vectors[0]
        retyped.append(float(cosines[-1]))
        for n, (text, cosine) in enumerate(zip(texts[1:-1], cosines[:-1], strict=True)):
            paraphrase = n < len(group.paraphrases)
            last = n == len(group.paraphrases) - 1 or n == len(texts) - 2
            rows.append(("paraphrase" if paraphrase else "near miss", not last, float(cosine),
                         same_question(group.question, text)))
    paraphrases = [r for r in rows if r[0] == "paraphrase"]
    near = [r for r in rows if r[0] == "near miss"]
    same_language = [r for r in paraphrases if r[1]]
    lines = [f"{len(groups)} groups: {len(paraphrases)} paraphrases ({len(same_language)} in the same language), "
             f"{len(near)} near misses; highest near miss {max(r[2] for r in near):.4f}, "
             f"paraphrase median {statistics.median(r[2] for r in paraphrases):.4f}",
             f"{'threshold':>9} | {'cosine: hits':>12} {'false':>6} | {'+ words: hits':>13} {'same lang':>9} "
             f"{'false':>6} | {'retyped: hits':>13}"]
    for threshold in THRESHOLDS:
        hits = sum(r[2] >= threshold for r in paraphrases) / len(paraphrases)
        false = sum(r[2] >= threshold for r in near)
        worded = sum(r[2] >= threshold and r[3] for r in paraphrases) / len(paraphrases)
        worded_same = sum(r[2] >= threshold and r[3] for r in same_language) / len(same_language)
        worded_false = sum(r[2] >= threshold and r[3] for r in near)
        again = sum(cosine >= threshold for cosine in retyped) / len(retyped)
        lines.append(f"{threshold:9.2f} | {hits:12.0%} {false:6d} | {worded:13.0%} {worded_same:9.0%} "
                     f"{worded_false:6d} | {again:13.0%}")
    return "\n".join(lines)


async def _chat(stub: gateway_pb2_grpc.GatewayStub, key: str, message: str) -> tuple[gateway_pb2.ChatResponse, float]:
    started = time.perf_counter()
    response = await stub.Chat(gateway_pb2.ChatRequest(message=message, model_hint="instant"),
                               metadata=(('authorization', f'Bearer {key}'),), timeout=30)
    return response, time.perf_counter() - started


async def through_the_mesh(stack: LocalStack, groups: list[Group]) -> str:
    cached_key = await bench_key(stack, "bench-cache", "bench-user", cache=True)
    plain_key = await bench_key(stack, "bench-nocache", "bench-user")
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for group in groups:  # the answers kept
            await _chat(stub, cached_key, group.question)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kept in the background: until the last one is found again
            again, _ = await _chat(stub, cached_key, groups[-1].question)
            if again.cached:
                break
            await asyncio.sleep(0.2)
        hits: list[float] = []
        misses: list[float] = []
        plain: list[float] = []
        paraphrase_hits = false_hits = asked_paraphrases = asked_near = retyped_hits = 0
        for group in groups:
            response, seconds = await _chat(stub, cached_key, group.retyped)
            plain.append((await _chat(stub, plain_key, group.retyped))[1])
            if response.cached and response.message.content == ANSWER_PREFIX + group.question:
                retyped_hits += 1
                hits.append(seconds)
            else:
                false_hits += response.cached
                misses.append(seconds)
            for text in group.paraphrases:
                asked_paraphrases += 1
                response, seconds = await _chat(stub, cached_key, text)
                plain.append((await _chat(stub, plain_key, text))[1])
                answered = response.message.content.removeprefix(ANSWER_PREFIX)
                if response.cached:
                    hits.append(seconds)
                    right = answered in (group.question, *group.paraphrases)
                    paraphrase_hits += right
                    false_hits += not right
                else:
                    misses.append(seconds)
            for text in group.near_misses:
                asked_near += 1
                response, seconds = await _chat(stub, cached_key, text)
                plain.append((await _chat(stub, plain_key, text))[1])
                if response.cached:
                    hits.append(seconds)
                    false_hits += 1
                else:
                    misses.append(seconds)

    return "\n".join([
        f"questions typed again answered from the cache: {retyped_hits}/{len(groups)}",
        f"paraphrases answered from the cache: {paraphrase_hits}/{asked_paraphrases} "
        f"({paraphrase_hits / asked_paraphrases:.0%}); false hits: {false_hits} "
        f"(of {asked_near} near misses, {asked_paraphrases} paraphrases and {len(groups)} questions typed again)",
        f"p50 of a turn: hit {_p50(hits)} ({len(hits)}), miss {_p50(misses)} ({len(misses)}), "
        f"same turns without the cache {_p50(plain)} ({len(plain)}); "
        f"a miss adds {_added(misses, plain)} (the lookup)",
    ])


async def with_recall(stack: LocalStack, groups: list[Group]) -> str:
    """What a miss costs when recall is on: recall embeds the question first, so the lookup finds its vector in
    memory's embedding cache and pays only the call and the search."""
    cached_key = await bench_key(stack, "bench-recall-cache", "bench-user", memory=True, cache=True)
    plain_key = await bench_key(stack, "bench-recall", "bench-user", memory=True)
    misses: list[float] = []
    plain: list[float] = []
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for group in groups:
            for text in group.paraphrases[:2]:  # alternating, so that drift weighs on both alike
                response, seconds = await _chat(stub, cached_key, text)
                if not response.cached:
                    misses.append(seconds)
                plain.append((await _chat(stub, plain_key, text))[1])

    return (f"with recall on: miss {_p50(misses)} ({len(misses)}), the same turns without the cache {_p50(plain)} "
            f"({len(plain)}); a miss adds {_added(misses, plain)}")


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms" if values else "-"


def _added(misses: list[float], plain: list[float]) -> str:
    if not misses or not plain:
        return "-"
    return f"{(statistics.median(misses) - statistics.median(plain)) * 1000:+.1f} ms"


def main() -> dict[str, str]:
    groups = load_groups()
    table = calibrate(groups)
    print("Response cache calibration (multilingual-e5-small, questions as queries):")
    print(table)
    with tempfile.TemporaryDirectory(prefix="moteur-bench-") as data_dir:
        options = StackOptions(data_dir=Path(data_dir), model_server=False, service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            mesh = asyncio.run(through_the_mesh(stack, groups))
            mesh += "\n" + asyncio.run(with_recall(stack, groups))
    print("Through the mesh (gateway Chat, instant model, threshold MOTEUR_RESPONSE_CACHE_MIN_SCORE):")
    print(mesh)
    return {"calibration": table, "mesh": mesh}


if __name__ == "__main__":
    main()
