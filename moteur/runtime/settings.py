"""Settings every moteur service reads from its environment (prefix ``MOTEUR_``).

One class per concern keeps a service from reading what it does not use; all of them share the prefix
so that a Helm ConfigMap or ``make run`` can set them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    max_message_bytes: int = Field(8 * 1024 * 1024, description="Largest gRPC message accepted or sent.")


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


class FilesSettings(MoteurSettings):
    files_dir: Path = Field(Path(".data/files"), description="Directory where rendered files are stored.")


class GatewaySettings(MoteurSettings):
    tiers_file: Path = Field(Path("config/tiers.yaml"), description="Tiers: limits, quotas and priorities (YAML).")
    alert_webhook_url: str = Field("", description="Where quota alerts are POSTed as JSON; empty: not sent.")
    lease_seconds: float = Field(
        600.0, description="Longest a concurrency slot is held if its gateway dies mid-call (crash recovery)."
    )
    queue_capacity: int = Field(64, gt=0, description="Chat turns dispatched to the models at once, per replica.")
    queue_max_queued: int = Field(1000, ge=0, description="Turns that may wait, per replica.")
    queue_max_queued_per_tenant: int = Field(100, ge=0, description="Turns one tenant may have waiting.")
    queue_critical_reserve: int = Field(4, ge=0, description="Dispatch slots only critical turns may use.")
    queue_max_wait_seconds: float = Field(30.0, gt=0, description="Longest a turn waits for a slot.")
