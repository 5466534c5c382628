"""Fixtures that start the real stack once per test session: SecantusDB, redis-server, the llama.cpp model
server with SmolLM2, and the five services, each on a free loopback port, stopped at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from moteur.client import AsyncMoteurClient
from moteur.devstack.stack import LocalStack, StackOptions
from moteur.gateway.auth import ApiKeyStore
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    # "paced" answers after 0.8 s, always: tests that need a turn to be in flight use it, not the real model.
    paced = {"name": "paced", "provider": "instant", "simulated_latency_ms": 800}
    with LocalStack(StackOptions(data_dir=data_dir, extra_models=[paced])) as running:
        yield running


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
async def alice(make_caller) -> Caller:  # type: ignore[no-untyped-def]
    return await make_caller("acme", "alice")


@pytest.fixture(scope="session")
async def mallory(make_caller) -> Caller:  # type: ignore[no-untyped-def]
    """A user of another tenant."""
    return await make_caller("globex", "mallory")
