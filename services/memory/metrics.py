"""The memory service's own metrics: embeddings computed, their batches and the cache."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EMBED_TEXTS = Counter("moteur_embedding_texts_total", "Texts run through the embedding model (cache misses).")
EMBED_BATCH = Histogram("moteur_embedding_batch_size",
                        "Texts per model run (concurrent requests batched), by lane: queries, passages, or shared.",
                        ["lane"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
EMBED_CACHE = Counter("moteur_embedding_cache_total", "Texts looked up in the embedding cache, by result.", ["result"])
EXTRACTIONS = Counter("moteur_memory_extractions_total", "Turns read for facts, by the extractor that answered.",
                      ["extractor"])
FACT_CHANGES = Counter("moteur_memory_fact_changes_total", "Decisions on candidate facts (add, update, delete, none).",
                       ["action", "extractor"])
LATE_WRITES_DROPPED = Counter(
    "moteur_memory_forgotten_writes_dropped_total",
    "Records and extractions of a user's messages that arrived after the user was forgotten, dropped.", ["stage"])
for _stage in ("upsert", "extract"):  # exported at 0 from the start, for the dashboard
    LATE_WRITES_DROPPED.labels(_stage)
REEMBEDDED = Counter("moteur_memory_reembedded_total",
                     "Vectors of a former embedding model re-embedded with the current one.")
REEMBED_REMAINING = Gauge("moteur_memory_reembedding_remaining",
                          "Vectors of a former embedding model still to re-embed (left out of searches until then).")
ANSWER_CACHE_ENTRIES = Gauge("moteur_answer_cache_entries",
                             "Answers kept by the semantic response cache in this replica's mirror (a Lite file).")
ANSWER_CACHE_CALLS = Counter("moteur_answer_cache_calls_total",
                             "Response-cache calls to memory: lookups by whether they found an answer, and stores.",
                             ["call", "result"])
