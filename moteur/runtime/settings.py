"""Settings every moteur service reads from its environment (prefix ``MOTEUR_``).

One class per concern keeps a service from reading what it does not use; all of them share the prefix
so that a Helm ConfigMap or ``make run`` can set them the same way. Only what several services read is here
(serving, the mesh, MongoDB); each service's own settings are in its folder: ``moteur.<service>.settings``.
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
    max_connection_age_seconds: float = Field(
        60.0, gt=0, description="A client connection is closed after this long (±10 %), so that clients resolve "
        "the service's pods again and spread over new ones."
    )
    max_connection_age_grace_seconds: float = Field(
        130.0, ge=0, description="Calls in flight on a connection being closed for its age may take this long to "
        "finish (the longest chat turn)."
    )
    max_message_bytes: int = Field(8 * 1024 * 1024, description="Largest gRPC message accepted or sent.")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The event loop: uvloop (libuv) spends less CPU per call on sockets than asyncio's "
        "own (bench/chat_path.py); asyncio to rule it out when chasing a bug."
    )


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
