"""The memory service's Embed through gRPC: the local multilingual E5 model, batching across callers, bad input."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from moteur.runtime.identity import Identity
from moteur.v1 import memory_pb2, memory_pb2_grpc
from tests.mesh import signed

MESH = Identity("acme", "alice", "standard")


@pytest.fixture
async def memory(stack):
    async with grpc.aio.insecure_channel(stack.address("memory")) as channel:
        yield memory_pb2_grpc.MemoryStub(channel)


async def _embed(memory, *texts: str) -> memory_pb2.EmbedResponse:
    return await memory.Embed(memory_pb2.EmbedRequest(texts=list(texts)), metadata=signed(MESH), timeout=10)


async def test_embeddings_are_normalised_and_put_similar_sentences_close(memory) -> None:
    reply = await _embed(memory, "The cat sits on the mat.", "A kitten is lying on the rug.",
                         "Quarterly revenue grew by five percent.")
    vectors = np.array([e.values for e in reply.embeddings])
    assert reply.model == "multilingual-e5-small-q4" and reply.dimensions == 384 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.05  # E5's cosines are compressed: unrelated is still ~0.75


async def test_a_french_sentence_lands_next_to_its_english_paraphrase(memory) -> None:
    reply = await _embed(memory, "I live in Lyon.", "J'habite à Lyon.", "Quarterly revenue grew by five percent.")
    vectors = np.array([e.values for e in reply.embeddings])
    assert vectors[0] @ vectors[1] > 0.9 > vectors[0] @ vectors[2]


async def test_queries_and_passages_are_embedded_apart(memory) -> None:
    passage = await _embed(memory, "Where do I live?")
    query = await memory.Embed(memory_pb2.EmbedRequest(texts=["Where do I live?"], query=True),
                               metadata=signed(MESH), timeout=10)
    assert not np.allclose(passage.embeddings[0].values, query.embeddings[0].values, atol=1e-3)


async def test_concurrent_callers_get_their_own_vectors_back(memory) -> None:
    texts = [f"note {i}: the lighthouse keeper counted {i} ships" for i in range(40)]
    singles = await asyncio.gather(*(_embed(memory, t) for t in texts))
    together = await _embed(memory, *texts)
    for single, batched in zip(singles, together.embeddings, strict=True):
        assert np.allclose(single.embeddings[0].values, batched.values, atol=1e-4)


@pytest.mark.parametrize(("texts", "field"), [
    ([], "texts"), (["ok", "  "], "texts[1]"), (["x" * 8193], "texts[0]"), (["t"] * 257, "texts"),
])
async def test_bad_input_is_invalid_and_names_the_field(memory, texts: list[str], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await memory.Embed(memory_pb2.EmbedRequest(texts=texts), metadata=signed(MESH), timeout=10)
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:")


async def test_a_call_without_the_mesh_identity_is_refused(memory) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await memory.Embed(memory_pb2.EmbedRequest(texts=["hi"]), timeout=10)
    assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
