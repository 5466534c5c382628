"""Embeddings from an OpenAI-compatible provider, over real HTTP against the fault server."""

from __future__ import annotations

import numpy as np
import pytest

from moteur.devstack.faults import FaultServer
from moteur.memory.embeddings import BatchingEmbedder, ProviderEmbeddings
from moteur.runtime.errors import Unavailable


async def test_provider_vectors_are_normalised_stable_and_batched() -> None:
    async with FaultServer() as server:
        embedder = BatchingEmbedder(ProviderEmbeddings("ok dims=12", server.base_url, "", 12))
        first = await embedder.embed(["alpha", "beta"])
        again = await embedder.embed(["beta"])
        assert first.shape == (2, 12) and np.allclose(np.linalg.norm(first, axis=1), 1)
        assert np.allclose(first[1], again[0]) and not np.allclose(first[0], first[1])
        # passages are embedded one at a time (a search waits for one at most); "beta" came from the cache
        assert server.calls["ok dims=12"] == 2


async def test_a_failing_or_misconfigured_provider_is_unavailable_with_its_name() -> None:
    async with FaultServer() as server:
        with pytest.raises(Unavailable, match="provider for 'status:500' failed"):
            await ProviderEmbeddings("status:500", server.base_url, "", 8).embed_batch(["x"])
        with pytest.raises(Unavailable, match=r"shape \(1, 8\), expected \(1, 384\)"):
            await ProviderEmbeddings("ok", server.base_url, "", 384).embed_batch(["x"])
