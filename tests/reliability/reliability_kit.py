"""Helpers of the reliability suite: what counts as a clear failure, keys and clients on a stack of a
test module's own (the fault and replica tests start one), polling with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from pymongo import AsyncMongoClient

from moteur.client import AsyncMoteurClient
from moteur.devstack.stack import LocalStack
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.mongo import database
from moteur.runtime.settings import MongoSettings

# What a caller may see when part of the mesh is down: each says what happened and when to retry.
CLEAR_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass
class Keys:
    """Creates API keys on one stack and clients that use them; closes the clients at the end."""

    stack: LocalStack
    mongo: AsyncMongoClient
    clients: list[AsyncMoteurClient] = field(default_factory=list)

    @property
    def store(self) -> ApiKeyStore:
        return ApiKeyStore(database(self.mongo, MongoSettings(mongo_uri=self.stack.mongo_uri)))

    async def client(self, tenant: str, user: str, tier: str = "standard", admin: bool = False,
                     address: str = "", timeout: float = 15.0) -> tuple[str, AsyncMoteurClient]:
        key, _ = await self.store.create(tenant, user, tier, admin=admin)
        client = AsyncMoteurClient(address or self.stack.address("gateway"), key, timeout=timeout)
        self.clients.append(client)
        return key, client

    def on(self, address: str, key: str, timeout: float = 15.0) -> AsyncMoteurClient:
        """Another client of an existing key, on another gateway replica."""
        client = AsyncMoteurClient(address, key, timeout=timeout)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.mongo.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float, every: float = 0.2) -> float:
    """Poll ``check`` until it holds; returns the seconds it took, fails after ``within``."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"still not true after {within:g} s")
        await asyncio.sleep(every)

