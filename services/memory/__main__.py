"""``python -m moteur.memory``: embeddings, memories in Milvus, and the long-term memory of key facts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

from moteur.memory.answers import AnswerCache
from moteur.memory.documents import DocumentStore
from moteur.memory.embeddings import (
    BatchingEmbedder,
    E5Embeddings,
    EmbeddingModel,
    MiniLMEmbeddings,
    ProviderEmbeddings,
)
from moteur.memory.extraction import LLMExtractor
from moteur.memory.facts import FactMemory
from moteur.memory.forgotten import ForgottenUsers
from moteur.memory.migration import Reembedding
from moteur.memory.servicer import MemoryServicer
from moteur.memory.settings import MemorySettings
from moteur.memory.store import VectorStore
from moteur.runtime.channels import open_channel
from moteur.runtime.completion import Complete, complete_json
from moteur.runtime.identity import SCOPE_EMBED, SCOPE_MEMORY_READ, SCOPE_MEMORY_WRITE, mesh_identity
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.server import Registration, ServiceApp, run
from moteur.runtime.settings import MeshSettings, MongoSettings
from moteur.v1 import memory_pb2, memory_pb2_grpc, router_pb2_grpc


def router_completion(router: router_pb2_grpc.RouterStub, timeout: float) -> Complete:
    async def complete(system: str, user: str, schema: dict[str, object]) -> str:
        # On behalf of the caller of Extract (the gateway's outbox): its token is forwarded unchanged.
        return await complete_json(router, mesh_identity(), system, user, schema, timeout=timeout,
                                   max_output_tokens=200)

    return complete


async def build() -> AsyncIterator[Sequence[Registration]]:
    settings, mongo_settings = MemorySettings(), MongoSettings()
    # Queries get a lane of their own (BatchingEmbedder): a second engine for the local E5 (one engine runs
    # one call at a time; a second costs about 9 MB), the same object where concurrent calls are safe.
    model: EmbeddingModel
    query_model: EmbeddingModel
    if settings.embedding_provider == "openai":
        model = query_model = ProviderEmbeddings(
            settings.embedding_model, settings.embedding_base_url, os.environ.get(settings.embedding_api_key_env, ""),
            settings.embedding_dimensions)
    elif settings.embedding_provider == "minilm":
        model = query_model = await asyncio.to_thread(MiniLMEmbeddings)  # an onnxruntime session takes concurrent runs
    else:
        model = await asyncio.to_thread(E5Embeddings, settings.embedding_threads)
        query_model = await asyncio.to_thread(E5Embeddings, settings.embedding_threads)
    embedder = BatchingEmbedder(model, query_model=query_model)
    store = VectorStore(settings.milvus_uri, model.dimensions, settings.milvus_index_type,
                        settings.milvus_index_params, settings.milvus_search_params,
                        {"auto": None, "exact": True, "milvus": False}[settings.milvus_search])
    await store.open()
    answers = AnswerCache(store, embedder, settings.answer_cache_max_per_context,
                          settings.answer_cache_max_per_tenant)
    await answers.open()
    mongo = connect_mongo(mongo_settings)
    router_channel = open_channel(MeshSettings().router_addr)
    llm = None
    if settings.fact_extractor == "auto":
        llm = LLMExtractor(router_completion(router_pb2_grpc.RouterStub(router_channel),
                                             settings.extraction_timeout_seconds))
    db = database(mongo, mongo_settings)
    facts, documents = FactMemory(db, embedder, store, llm), DocumentStore(db, embedder, store)
    await facts.ensure_indexes()
    migration = Reembedding(store, embedder, settings.reembed_batch)
    migration.start()  # vectors of a former model, if any: re-embedded behind live requests
    try:
        yield [
            Registration(
                memory_pb2.DESCRIPTOR.services_by_name["Memory"],
                MemoryServicer(embedder, store, facts, documents, ForgottenUsers(db), migration, answers),
                memory_pb2_grpc.add_MemoryServicer_to_server,
            )
        ]
    finally:
        await migration.stop()
        await answers.close()
        await embedder.aclose()
        await store.close()
        await router_channel.close()
        await mongo.close()


app = ServiceApp("memory", build, scopes={
    "Embed": SCOPE_EMBED, "Search": SCOPE_MEMORY_READ, "List": SCOPE_MEMORY_READ, "FactHistory": SCOPE_MEMORY_READ,
    "Upsert": SCOPE_MEMORY_WRITE, "Delete": SCOPE_MEMORY_WRITE, "UpsertDocument": SCOPE_MEMORY_WRITE,
    "Extract": SCOPE_MEMORY_WRITE, "LookupAnswer": SCOPE_MEMORY_READ, "StoreAnswer": SCOPE_MEMORY_WRITE,
    "ClearAnswers": SCOPE_MEMORY_WRITE,
})

if __name__ == "__main__":
    run(app)
