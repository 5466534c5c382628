"""Fixtures that start the real stack once per test session: SecantusDB, redis-server, the llama.cpp model
server with SmolLM2, and the five services, each on a free loopback port, stopped at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pymongo import AsyncMongoClient

from moteur.client import AsyncMoteurClient
from moteur.devstack.processes import ManagedProcess, free_port, port_open
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.identity import Identity
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings
from moteur.v1 import tools_pb2, tools_pb2_grpc
from tests import mesh
from tests.mesh import signed

# The tools policy of the test stack: acme may use every built-in and has three MCP servers (stdio): the
# notes server, the same for the enterprise tier only, and one that cannot start; other tenants get the
# defaults. Tests that change it (reloads) write it back when done.
NOTES_SERVER = [sys.executable, str(Path(__file__).with_name("mcp_notes_server.py"))]
TOOLS_CONFIG = {
    "defaults": {"allow": ["calculator", "datetime_now", "convert_units", "knowledge_search"]},
    "tenants": {"acme": {"allow": ["*"], "mcp_servers": [
        {"name": "notes", "transport": "stdio", "command": NOTES_SERVER, "timeout_ms": 10_000},
        {"name": "vault", "transport": "stdio", "command": [*NOTES_SERVER, "vault"], "tiers": ["enterprise"]},
        {"name": "broken", "transport": "stdio", "command": [sys.executable, "-c", "raise SystemExit(3)"]},
    ]}},
}


# The marker of each test, by directory (registered in pyproject.toml; `make test-unit` runs `-m unit`).
_MARKER_BY_DIRECTORY = {"e2e": "e2e", "reliability": "reliability", "deploy": "deploy",
                        "observability": "observability"}
# The fixtures below that start the real stack (or a process of it): a top-level test using one is e2e, not unit.
_STACK_FIXTURES = frozenset({"stack", "fault_server", "mcp_ready", "mongo", "key_store", "make_caller", "alice",
                             "mallory"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(tests) if item.path.is_relative_to(tests) else item.path
        if len(relative.parts) > 1:
            marker = _MARKER_BY_DIRECTORY.get(relative.parts[0])
        elif _STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            marker = "e2e"
        else:  # a module marked slow (real processes, real timeouts) stays out of `make test-unit`
            marker = None if item.get_closest_marker("slow") else "unit"
        if marker is not None:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fault-injecting OpenAI-compatible server (moteur.devstack.faults) in its own process: the
    stack's "scripted" model plays the tool calls a test scripts for its question (POST /scripts)."""
    port = free_port()
    server = ManagedProcess("faults", [sys.executable, "-m", "moteur.devstack.faults", str(port)],
                            tmp_path_factory.mktemp("faults") / "faults.log", ready=lambda: port_open(port))
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, fault_server: str) -> Iterator[LocalStack]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    # "paced" answers after 0.8 s, always: tests that need a turn to be in flight use it, not the real model.
    paced = {"name": "paced", "provider": "instant", "simulated_latency_ms": 800}
    # ... and one call at a time: the gateway's pool for it dispatches one turn at a time.
    single = {"name": "paced-single", "provider": "instant", "simulated_latency_ms": 800, "max_concurrency": 1}
    restricted = {"name": "enterprise-only", "provider": "instant", "tiers": ["enterprise"]}
    # answers at once and costs something (cost quotas): $1 per 1k tokens either way
    priced = {"name": "priced", "provider": "instant", "input_price_per_1k_usd": 1.0, "output_price_per_1k_usd": 1.0}
    scripted = {"name": "scripted", "provider": "openai", "model": "script", "base_url": f"{fault_server}/v1",
                "supports_tools": True, "supports_json": True, "timeout_seconds": 10}
    options = StackOptions(data_dir=data_dir, second_model=True,
                           extra_models=[paced, single, restricted, scripted, priced],
                           fact_extractor="rules", tools_config=TOOLS_CONFIG,
                           # the gateway re-reads a tenant's tools within a second (MCP servers connect late)
                           service_env={"MOTEUR_TOOL_LIST_CACHE_SECONDS": "1",
                                        # MCP servers' tool lists re-read each second (changes show soon)
                                        "MOTEUR_MCP_REFRESH_SECONDS": "1"})
    with LocalStack(options) as running:
        mesh.use(running.mesh_issuer())
        yield running


@pytest.fixture(scope="session")
def mcp_ready(stack: LocalStack) -> None:
    """acme's notes MCP server is connected and its tools listed: a first start of its Python process on a
    cold, busy machine can outlast the tools service's own wait for it."""
    identity = signed(Identity("acme", "alice", "standard"))
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(stack.address("tools")) as channel:
        tools = tools_pb2_grpc.ToolsStub(channel)
        while True:
            listed = tools.ListTools(tools_pb2.ListToolsRequest(), metadata=identity, timeout=5)
            if "notes__wait" in {t.name for t in listed.tools}:
                break
            assert time.monotonic() < deadline, "the notes MCP server's tools were not listed within 60 s"
            time.sleep(0.2)
    time.sleep(1.1)  # past the gateway's tool-list cache (MOTEUR_TOOL_LIST_CACHE_SECONDS above)


@pytest.fixture(scope="session")
async def mongo(stack: LocalStack) -> AsyncIterator[AsyncMongoClient]:
    client = connect_mongo(MongoSettings(mongo_uri=stack.mongo_uri))
    yield client
    await client.close()


@pytest.fixture(scope="session")
def key_store(stack: LocalStack, mongo: AsyncMongoClient) -> ApiKeyStore:
    return ApiKeyStore(database(mongo, MongoSettings(mongo_uri=stack.mongo_uri)))


@dataclass(frozen=True)
class Caller:
    """An API key and a client that uses it."""

    key: str
    tenant: str
    user: str
    client: AsyncMoteurClient


@pytest.fixture(scope="session")
async def make_caller(stack: LocalStack, key_store: ApiKeyStore) -> AsyncIterator[object]:
    clients: list[AsyncMoteurClient] = []

    async def make(tenant: str, user: str = "", tier: str = "standard", admin: bool = False) -> Caller:
        key, _ = await key_store.create(tenant, user, tier, admin=admin)
        client = AsyncMoteurClient(stack.address("gateway"), key)
        clients.append(client)
        return Caller(key, tenant, user, client)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
async def alice(make_caller) -> Caller:
    return await make_caller("acme", "alice")


@pytest.fixture(scope="session")
async def mallory(make_caller) -> Caller:
    """A user of another tenant."""
    return await make_caller("globex", "mallory")
