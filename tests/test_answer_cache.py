"""Memory's answer cache keeps within its bounds in process: per context, and per tenant, where a tenant that keeps
many answers pushes out only its own oldest ones."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from moteur.memory.answers import AnswerCache, CachedAnswer


def _entry(tenant: str, context: str, n: int) -> CachedAnswer:
    return CachedAnswer(f"{tenant}-{context}-{n}", tenant, context, "ana", "e5", f"question {n}", "{}", n, 10**15)


def _ids(cache: AnswerCache, tenant: str) -> set[str]:
    shelves = cache._mirror[tenant] if cache._mirror else {}  # the mirror is what is bounded
    return {e.id for shelf in shelves.values() for e in shelf.entries}


def test_a_tenant_over_its_caps_drops_its_own_oldest_answers_only() -> None:
    store = SimpleNamespace(mirror=object())  # a Lite file: answers are mirrored in process
    cache = AnswerCache(store, embedder=None, max_per_context=3, max_per_tenant=5)  # type: ignore[arg-type]
    vector = np.ones(4, dtype=np.float32) / 2
    cache._keep(_entry("globex", "c", 0), vector)
    dropped = [i for n in range(1, 5) for i in cache._keep(_entry("acme", "a", n), vector)]
    assert dropped == ["acme-a-1"]  # 3 per context
    dropped += [i for n in range(5, 9) for i in cache._keep(_entry("acme", "b", n), vector)]
    # b-7 takes acme over 5: its oldest (a-2) goes; b-8 takes context b over 3: b-5 goes.
    assert dropped == ["acme-a-1", "acme-a-2", "acme-b-5"]
    assert _ids(cache, "acme") == {"acme-a-3", "acme-a-4", "acme-b-6", "acme-b-7", "acme-b-8"}
    assert _ids(cache, "globex") == {"globex-c-0"}  # older than all of acme's, and kept
