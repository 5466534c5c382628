"""Memory: embedding throughput and latency, Milvus search against exact numpy search, and the cost of
recall on a chat turn.

1. Embeddings: the service's model (MiniLM int8 ONNX) in batches of 32 vs one sentence at a time
   (PyTorch is not installed here, so sentence-transformers is not the baseline: unbatched onnxruntime is).
2. Search: the memory service's store (Milvus Lite, FLAT, tenant partition key) at 10k and 100k vectors,
   one tenant in ten searched, p50/p99 and recall@10 against numpy's exact search over the same vectors.
3. Chat: the gateway's Chat at concurrency 1 with recall on and off (instant model, a user with memories).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.keys import bench_key
from bench.torch_baseline import SAMPLES
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.memory.embeddings import MiniLMEmbeddings
from moteur.memory.store import MemoryRecord, SearchFilter, VectorStore
from moteur.v1 import gateway_pb2, gateway_pb2_grpc

SIZES = (10_000, 100_000)
QUERIES = int(os.environ.get("BENCH_QUERIES", "100"))
TENANTS = 10


def _embeddings() -> None:
    model = MiniLMEmbeddings()
    texts = [f"Note {i}: the lighthouse keeper wrote about ships, storms and the sea at dawn." for i in range(640)]
    model.embed_array(texts[:32])
    started = time.perf_counter()
    for i in range(0, len(texts), 32):
        model.embed_array(texts[i:i + 32])
    batched = len(texts) / (time.perf_counter() - started)
    singles = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        model.embed_array([text])
        singles.append(time.perf_counter() - t0)
    unbatched = len(singles) / sum(singles)
    print("embeddings (all-MiniLM-L6-v2 int8, onnxruntime, 2 threads):")
    print(f"  batches of 32: {batched:.0f} sentences/s; one at a time: {unbatched:.0f} sentences/s "
          f"({batched / unbatched:.1f}x); single sentence p50 {statistics.median(singles) * 1000:.2f} ms")
    torch_python = os.environ.get("BENCH_TORCH_PYTHON", "")
    if not torch_python:
        print("  sentence-transformers on PyTorch: not measured (set BENCH_TORCH_PYTHON, see bench/torch_baseline.py)")
        return
    baseline = json.loads(subprocess.run([torch_python, str(Path(__file__).with_name("torch_baseline.py"))],
                                         check=True, capture_output=True, text=True,
                                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout)
    agreement = np.sum(model.embed_array(SAMPLES) * np.asarray(baseline["vectors"]), axis=1)
    print(f"  sentence-transformers on PyTorch (fp32, 2 threads): batches of 32 {baseline['batched_per_s']:.0f} "
          f"sentences/s ({batched / baseline['batched_per_s']:.2f}x for the int8 ONNX model); single sentence "
          f"p50 {baseline['single_p50_ms']:.2f} ms; cosine of int8 to fp32 vectors: min {agreement.min():.3f}")


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
        await store._run(store.client.flush, "moteur_memories")
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


async def _chat(address: str, key: str) -> None:
    metadata = [("authorization", f"Bearer {key}")]
    async with grpc.aio.insecure_channel(address) as channel:
        gateway = gateway_pb2_grpc.GatewayStub(channel)
        for fact in ("My name is Ada and I live in Lyon.", "I work at Airbus.", "My favourite colour is green."):
            await gateway.Chat(gateway_pb2.ChatRequest(message=fact, model_hint="instant"), metadata=metadata)
        await asyncio.sleep(3)  # the outbox delivers them to memory

        async def measure(use_memory: bool) -> list[float]:
            latencies = []
            for _ in range(QUERIES):
                t0 = time.perf_counter()
                await gateway.Chat(gateway_pb2.ChatRequest(message="Where do I live?", model_hint="instant",
                                                           use_memory=use_memory), metadata=metadata, timeout=10)
                latencies.append(time.perf_counter() - t0)
            return latencies

        off, on = await measure(False), await measure(True)
    print("chat at concurrency 1 (instant model), recall off vs on:")
    for name, values in (("off", off), ("on", on)):
        print(f"  recall {name:<3}: p50 {np.percentile(values, 50) * 1000:.2f} ms p99 "
              f"{np.percentile(values, 99) * 1000:.2f} ms")
    print(f"  recall adds p50 {(np.median(on) - np.median(off)) * 1000:.2f} ms")


def main() -> None:
    _embeddings()
    with tempfile.TemporaryDirectory(prefix="moteur-bench-memory-") as data_dir:
        print("search (one tenant of ten, top 10):")
        for size in SIZES:
            asyncio.run(_search(size, Path(data_dir)))
        options = StackOptions(data_dir=Path(data_dir) / "stack", model_server=False, fact_extractor="rules",
                               service_env={"MOTEUR_LOG_LEVEL": "WARNING"})
        with LocalStack(options) as stack:
            key = asyncio.run(bench_key(stack, "bench", "bench-user", memory=True))
            asyncio.run(_chat(stack.address("gateway"), key))


if __name__ == "__main__":
    main()
