"""The exact in-process index against a plain numpy search, with every filter, upserts and deletions."""

from __future__ import annotations

import numpy as np

from moteur.memory.exact import ExactIndex
from moteur.memory.records import MemoryRecord, SearchFilter


def _records(n: int, tenant: str) -> list[MemoryRecord]:
    return [MemoryRecord(id=f"{tenant}-{i}", tenant=tenant, user=f"u{i % 3}", session=f"s{i % 5}",
                         kind="fact" if i % 2 else "message", text=f"text {i}", model="m", created_at_ms=i)
            for i in range(n)]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_search_equals_numpy_exact_search_under_filters_and_changes() -> None:
    rng = np.random.default_rng(1)
    index = ExactIndex(16)
    records, vectors = _records(500, "a"), _unit(rng, 500)
    index.put(records, vectors)
    index.put(_records(100, "b"), _unit(rng, 100))  # another tenant: never in a's results
    index.put(records[:10], vectors[10:20])  # upserting known ids replaces their vectors
    vectors[:10] = vectors[10:20]
    index.drop("a", [r.id for r in records[200:450]])  # enough deletions to compact
    alive = [i for i in range(500) if not 200 <= i < 450]
    query = _unit(rng, 1)[0]
    where = SearchFilter(tenant="a", model="m", user="u1", kinds=["fact"], created_after_ms=20, created_before_ms=480)
    expected = [i for i in alive if i % 3 == 1 and i % 2 == 1 and 20 <= i < 480]
    expected.sort(key=lambda i: -float(vectors[i] @ query))
    hits = index.search(query, where, top_k=7, min_score=-1)
    assert [h.record.id for h in hits] == [f"a-{i}" for i in expected[:7]]
    assert all(h.record.tenant == "a" for h in hits)
    assert index.search(query, SearchFilter(tenant="a", ids=["a-300"]), 5, -1) == []  # deleted
    assert len(index) == 250 + 100


def test_min_score_and_unknown_tenants() -> None:
    index = ExactIndex(2)
    index.put(_records(2, "a"), np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert [h.record.id for h in index.search(np.array([1, 0], np.float32), SearchFilter("a"), 5, 0.5)] == ["a-0"]
    assert index.search(np.array([1, 0], np.float32), SearchFilter("nobody"), 5, -1) == []
