"""The whole mesh on one machine: SecantusDB, redis-server, the llama.cpp model server and the five
services, each a real process on a loopback port. ``make run`` and the end-to-end tests both use it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL, model_path, server_argv
from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.devstack.supervisor import Supervisor
from moteur.runtime.identity import Identity
from moteur.runtime.mesh_tokens import GATEWAY_ISSUER, MeshTokenIssuer, write_key_pair

DEFAULT_DATA_DIR = Path(".data")
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"
SERVICES = ("router", "memory", "files", "tools", "gateway")  # start order: the gateway last
SIGNING_SERVICES = (GATEWAY_ISSUER, "router")


@dataclass
class StackOptions:
    data_dir: Path = DEFAULT_DATA_DIR
    model_server: bool = True  # False: only the instant model (benchmarks of the mesh itself)
    # "auto": a model extracts facts, the rules when it finds none (make run); "rules": the rules only (tests,
    # so that a test's chat turns do not queue extraction calls on the shared model server)
    fact_extractor: str = "auto"
    second_model: bool = False  # also serve the second model (`make run`, tests): extraction and the fallback
    preferred_ports: dict[str, int] = field(default_factory=dict)
    service_env: dict[str, str] = field(default_factory=dict)  # extra MOTEUR_* settings for every service
    extra_models: list[dict[str, object]] = field(default_factory=list)  # more registry entries (benchmarks)
    # The tools service's policy and MCP servers (config/tools.yaml's shape), written to the data dir;
    # None: the repository's config/tools.yaml.
    tools_config: dict[str, object] | None = None
    # Restart parts that exit on their own, with back-off and one line each (`make run`, the fault suite);
    # stop(), stopped() and restart() still stop a part on purpose.
    supervise: bool = False


def _grpc_healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)  # its stubs (types-grpcio-health-checking) lack Check
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)  # type: ignore[attr-defined]  # HealthStub.Check is missing from its stubs
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return reply.status == 200
    except OSError:
        return False


def _pick_port(preferred: int | None) -> int:
    return preferred if preferred and not port_open(preferred) else free_port()


class LocalStack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.data_dir = self.options.data_dir.resolve()
        names = ["mongo", "redis", "model", "model2", "gateway-http", *SERVICES, *(f"{s}-metrics" for s in SERVICES)]
        self.ports = {name: _pick_port(self.options.preferred_ports.get(name)) for name in names}
        self.processes: dict[str, ManagedProcess] = {}
        self.supervisor = Supervisor(self.processes) if self.options.supervise else None
        self._define()

    # -- addresses ---------------------------------------------------------------------------------
    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    @property
    def http_url(self) -> str:
        """The gateway's OpenAI-compatible HTTP API, as the openai SDK's ``base_url``."""
        return f"http://127.0.0.1:{self.ports['gateway-http']}/v1"

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.ports['mongo']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def models_file(self) -> Path:
        return self.data_dir / "models.yaml"

    @property
    def tools_file(self) -> Path:
        return REPO_CONFIG / "tools.yaml" if self.options.tools_config is None else self.data_dir / "tools.yaml"

    @property
    def mesh_keys_dir(self) -> Path:
        return self.data_dir / "mesh-keys"

    def mesh_issuer(self) -> MeshTokenIssuer:
        """The gateway's signer: what tests and benchmarks use to call an internal service directly."""
        return MeshTokenIssuer.from_pem_file(GATEWAY_ISSUER, self.mesh_keys_dir / f"{GATEWAY_ISSUER}.key")

    def mesh_metadata(self, identity: Identity) -> list[tuple[str, str]]:
        """Metadata for a direct call to an internal service as ``identity`` (tests, benchmarks): the mesh token
        the gateway would sign for that caller."""
        return self.mesh_issuer().sign(identity).as_metadata()

    def service_env(self, service: str) -> dict[str, str]:
        return {
            "MOTEUR_LISTEN_HOST": "127.0.0.1",
            "MOTEUR_GRPC_PORT": str(self.ports[service]),
            "MOTEUR_METRICS_PORT": str(self.ports[f"{service}-metrics"]),
            "MOTEUR_LOG_FORMAT": "json",
            "MOTEUR_DRAIN_SECONDS": "3",
            "MOTEUR_MONGO_URI": self.mongo_uri,
            "MOTEUR_MONGO_DB": "moteur",
            "MOTEUR_REDIS_URL": self.redis_url,
            "MOTEUR_ROUTER_ADDR": self.address("router"),
            "MOTEUR_MEMORY_ADDR": self.address("memory"),
            "MOTEUR_FILES_ADDR": self.address("files"),
            "MOTEUR_TOOLS_ADDR": self.address("tools"),
            "MOTEUR_MODELS_FILE": str(self.models_file),
            "MOTEUR_TOOLS_FILE": str(self.tools_file),
            "MOTEUR_TIERS_FILE": str(REPO_CONFIG / "tiers.yaml"),
            "MOTEUR_MILVUS_URI": str(self.data_dir / "milvus.db"),
            "MOTEUR_FILES_DIR": str(self.data_dir / "files"),
            "MOTEUR_FACT_EXTRACTOR": self.options.fact_extractor,
            "MOTEUR_MESH_KEYS_DIR": str(self.mesh_keys_dir / "public"),
            # The gateway signs its callers' identities, the router its own background calls; the others
            # only check tokens.
            **({"MOTEUR_MESH_SIGNING_KEY_FILE": str(self.mesh_keys_dir / f"{service}.key")}
               if service in SIGNING_SERVICES else {}),
            **({"MOTEUR_HTTP_PORT": str(self.ports["gateway-http"])} if service == "gateway" else {}),
            **self.options.service_env,
        }

    # -- processes ---------------------------------------------------------------------------------
    def _define(self) -> None:
        for service in SIGNING_SERVICES:  # kept across runs: a restarted part still trusts the others
            write_key_pair(self.mesh_keys_dir, service)
        logs = self.data_dir / "logs"
        redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
        secantusd = str(Path(sys.executable).with_name("secantusd-py"))
        self.processes["mongo"] = ManagedProcess(
            "mongo", [secantusd, "--host", "127.0.0.1", "--port", str(self.ports["mongo"]),
                      "--storage-path", str(self.data_dir / "mongo"), "--log-level", "WARNING",
                      # Acknowledged writes survive a kill -9 (the fault suite lost turns without it): the
                      # journal is synced at each commit, as a MongoDB replica set's w=majority/j=true does.
                      "--sync-on-commit"],
            logs / "mongo.log", ready=lambda: port_open(self.ports["mongo"]),
        )
        self.processes["redis"] = ManagedProcess(
            # AOF, fsync each second: quota counters and leases survive a restart or a kill -9 (a lost one
            # is rebuilt from the usage ledger; see moteur.gateway.limiter)
            "redis", [redis_server, "--bind", "127.0.0.1", "--port", str(self.ports["redis"]), "--save", "",
                      "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data_dir)],
            logs / "redis.log", ready=lambda: port_open(self.ports["redis"]),
        )
        if self.options.model_server:
            self.processes["model"] = self._llama("model", CHAT_MODEL)
        if self.options.model_server and self.options.second_model:
            self.processes["model2"] = self._llama("model2", SECOND_MODEL)
        for service in SERVICES:
            port = self.ports[service]
            self.processes[service] = ManagedProcess(
                service, [sys.executable, "-m", f"moteur.{service}"], logs / f"{service}.log",
                env=self.service_env(service), ready=functools.partial(_grpc_healthy, port),
            )

    def _llama(self, name: str, model: str) -> ManagedProcess:
        port = self.ports[name]
        return ManagedProcess(
            name, server_argv(model, port), self.data_dir / "logs" / f"{name}.log",
            ready=lambda: _http_ok(f"http://127.0.0.1:{port}/v1/models"),
            ready_timeout=120,
        )

    def extra_gateway(self, name: str, **settings: str) -> tuple[ManagedProcess, str]:
        """Another gateway replica on the same stores and router (started by the caller, stopped by stop()),
        with extra ``MOTEUR_*`` settings."""
        return self.extra_service("gateway", name, **settings)

    def extra_service(self, service: str, name: str, **settings: str) -> tuple[ManagedProcess, str]:
        """Another replica of ``service`` on the same stores and peers (started by the caller, stopped by
        stop()), with extra ``MOTEUR_*`` settings."""
        port, metrics = free_port(), free_port()
        env = {**self.service_env(service), "MOTEUR_GRPC_PORT": str(port), "MOTEUR_METRICS_PORT": str(metrics),
               **({"MOTEUR_HTTP_PORT": str(free_port())} if service == "gateway" else {}), **settings}
        process = ManagedProcess(name, [sys.executable, "-m", f"moteur.{service}"],
                                 self.data_dir / "logs" / f"{name}.log", env=env, ready=lambda: _grpc_healthy(port))
        self.processes[name] = process
        return process, f"127.0.0.1:{port}"

    def write_models_file(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.models_file.write_text(yaml.safe_dump(self.models_config(), sort_keys=False))

    def models_config(self) -> dict[str, object]:
        """The registry of the local models: the chat model (moteur.devstack.models.CHAT_MODEL, chosen by
        ``python -m bench models``) answers chat, code and summaries; the second, smaller one is tried first for
        extraction (it summarises French texts in English: measured) and is the fallback of the others; without
        model servers, the instant model."""
        models: list[dict[str, object]] = []
        routes: list[dict[str, object]] = []
        local = {"provider": "openai", "context_window": 2048, "max_output_tokens": 256, "timeout_seconds": 60,
                 "max_concurrency": 2, "supports_json": True, "json_schema_style": "llamacpp"}
        chat, second = CHAT_MODEL, SECOND_MODEL
        if self.options.model_server:
            served = {"model": chat, "tokenizer": f"gguf:{model_path(chat)}",
                      "base_url": f"http://127.0.0.1:{self.ports['model']}/v1", **local}
            models.append({"name": chat, **served})
            # The same model offered tools, for a hint: llama.cpp follows a forced tool's schema with a grammar;
            # left to choose, Qwen writes its calls as text, which the router reads (tool_call_text). No route
            # offers it tools yet.
            models.append({"name": f"{chat}-tools", **served, "supports_tools": True, "tool_call_text": "qwen",
                           "max_concurrency": 1})
        fallback = []
        if self.options.model_server and self.options.second_model:
            models.append({"name": second, "model": second, "tokenizer": f"gguf:{model_path(second)}",
                           "base_url": f"http://127.0.0.1:{self.ports['model2']}/v1", **local})
            fallback = [second]
            routes.append({"name": "extract", "request_types": ["extract"], "candidates": [second, chat],
                           "temperature": 0.0})
            routes.append({"name": "summarize", "request_types": ["summarize"], "candidates": [chat, second],
                           "system_prompt": "Summarize the user's text in two or three sentences.",
                           "max_output_tokens": 128, "temperature": 0.2,
                           "examples": ["Summarize this article", "Give me a short summary of the meeting notes",
                                        "TL;DR of the following text", "What are the key points of this document?",
                                        "Summarize the following text in a few sentences"]})
        if self.options.model_server:
            routes.append({"name": "code", "request_types": ["code"], "candidates": [chat, *fallback],
                           "system_prompt": "You are a careful programmer. Answer with code and a short note.",
                           "temperature": 0.1,
                           "examples": ["Write a Python function that reverses a list", "Fix this bug in my code",
                                        "How do I write a SQL query that joins two tables?",
                                        "Write a function in JavaScript", "Why does this code throw an exception?"]})
            routes.append({"name": "chat", "candidates": [chat, *fallback], "temperature": 0.2,
                           "system_prompt": "You are a helpful assistant. Answer briefly, in the language of "
                                            "the user's message.",
                           "examples": ["Hello, how are you?", "Tell me about lighthouses",
                                        "What is the capital of France?"]})
        models.append({"name": "instant", "provider": "instant", "context_window": 8192, "max_concurrency": 64,
                       "supports_json": True, "supports_tools": True})
        models.extend(self.options.extra_models)
        if not routes:
            routes.append({"name": "chat", "candidates": ["instant"]})
        # A model server restarted by a fault test is tried again soon.
        return {"models": models, "routes": routes, "breaker": {"failure_threshold": 5, "open_seconds": 5}}

    def write_tools_file(self, config: dict[str, object]) -> None:
        """Replace the tools policy; the running tools service reloads it (tests change it this way)."""
        if self.options.tools_config is None:
            raise RuntimeError("this stack reads the repository's config/tools.yaml; set StackOptions.tools_config")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tools_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        self.write_models_file()
        if self.options.tools_config is not None:
            self.write_tools_file(self.options.tools_config)
        try:
            for process in self.processes.values():
                process.start()
        except BaseException:
            self.stop()
            raise
        if self.supervisor is not None:
            self.supervisor.start()

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        for process in reversed(self.processes.values()):
            process.stop()

    @contextlib.contextmanager
    def stopped(self, *names: str) -> Iterator[None]:
        """Parts down for the duration of the block (fault tests), started again on the way out."""
        for name in names:
            self.processes[name].stop()
        try:
            yield
        finally:
            for name in names:
                self.processes[name].start()

    def restart(self, name: str) -> None:
        self.processes[name].stop()
        self.processes[name].start()

    def describe(self) -> dict[str, str]:
        where = {name: f"127.0.0.1:{self.ports[name]}" for name in self.processes}
        where["gateway HTTP (OpenAI API)"] = self.http_url
        where.update({f"{s} /metrics": f"http://127.0.0.1:{self.ports[f'{s}-metrics']}/metrics" for s in SERVICES})
        return where

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dump(self) -> str:
        return json.dumps(self.describe(), indent=2)
